"""Paired metrics against the true target: L1, PSNR and SSIM (Gaussian window, standard constants).

Inputs are float tensors (B, 3, H, W) in [-1, 1]; metrics are computed on the
0-255 scale (L1 on 0-1), per image, and returned per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W) batches of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("images contain NaN or infinite values")


def _to255(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5)


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference on the 0-1 scale, per image."""
    _check(a, b)
    return ((_to255(a) - _to255(b)).abs() / 255).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    _check(a, b)
    mse = ((_to255(a) - _to255(b)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5,
         data_range: float | Tensor = 255.0) -> Tensor:
    """SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, L `data_range` (255, or
    one value per image), population (co)variances, valid-region average, mean over channels; per image.
    The valid region is the interior that skimage's reflect-padded filter keeps after cropping its border."""
    _check(a, b)
    x, y = _to255(a), _to255(b)
    g = _gaussian(window, sigma).to(x.device)
    c = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(5 * c, 1, window, window)
    # One grouped convolution over all five maps instead of five calls (bench/metrics.py: 1.2-1.9x on CPU).
    blurred = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel, groups=5 * c)
    mx, my, sxx, syy, sxy = blurred.split(c, dim=1)
    vx, vy, cxy = sxx - mx ** 2, syy - my ** 2, sxy - mx * my

    if isinstance(data_range, Tensor):
        r = data_range.to(x).reshape(-1, 1, 1, 1)
        c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    else:
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
