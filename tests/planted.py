"""Planted correspondences: the query is the key resampled through a known smooth warp."""

import math

import torch
import torch.nn.functional as F

from cocosnet.models.patchmatch import sample_at


def planted(size_h: int, size_w: int, *, channels: int = 16, noise: float = 0.05, seed: int = 0):
    """Return query, key (L2-normalised) and true (B, H, W, 2) key positions of each query pixel."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(1, channels, size_h, size_w, generator=g)
    key = F.avg_pool2d(key, 3, stride=1, padding=1, count_include_pad=False)
    key = F.normalize(key, dim=1)
    ys, xs = torch.meshgrid(torch.arange(size_h, dtype=torch.float32),
                            torch.arange(size_w, dtype=torch.float32), indexing="ij")
    dx = 3.0 + 2.5 * torch.sin(2 * math.pi * ys / size_h) + 0.3 * xs / size_w * 4
    dy = -2.0 + 2.0 * torch.cos(2 * math.pi * xs / size_w)
    truth = torch.stack([(xs + dx).clamp(0, size_w - 1), (ys + dy).clamp(0, size_h - 1)], dim=-1)[None]
    query = sample_at(key, truth.unsqueeze(3))[..., 0]
    query = query + noise * torch.randn(query.shape, generator=g)
    return F.normalize(query, dim=1), key, truth


def coarse_init(truth: torch.Tensor, *, jitter: float = 2.0, seed: int = 1) -> torch.Tensor:
    """What a coarser level hands on: positions at half resolution, upsampled, plus jitter."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.round(truth / 2) * 2
    return (coarse + (torch.rand(coarse.shape, generator=g) * 2 - 1) * jitter).unsqueeze(3)
