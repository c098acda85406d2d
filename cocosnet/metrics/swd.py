"""Sliced Wasserstein distance between two image sets, by the PGGAN protocol.

This is the SWD the CoCosNet papers report (PGGAN `metrics/sliced_wasserstein.py`,
run through `cal_sliced_wasserstein.py`), vectorised in torch:

* a Laplacian pyramid from the image size down to 16 px, with the 5x5 binomial
  kernel and mirror (reflect-101) borders as cv2.pyrDown/pyrUp; every level but
  the coarsest is the band-pass residual; pixels are float32 on the 0-255 scale;
* 128 random 7x7 neighbourhoods per image per level, centres uniform over the
  positions that keep the window inside the image;
* each set's descriptors normalised by that set's own per-channel mean and std
  (population std), over all its descriptors at that level;
* 4 repeats x 128 random unit directions; sorted projections; mean absolute
  difference; x 1e3 per level; "avg" is the mean over levels.

The random draws come from a seeded torch.Generator rather than NumPy's global
state, so values agree with the reference in distribution, not digit for digit;
`swd_from_draws` takes explicit draws for exact comparison.

By default the fake set gets its own neighbourhood centres, as in the
reference, so published SWD numbers compare with ours. `independent_draws=False`
offers a variant with common random numbers: both sets use the *same* centres
and directions. Each set's sample is still drawn as in the reference, but
identical sets then score 0 instead of the reference's sampling floor (at 64
px: about 39 for 16 images, 20 for 64, 10 for 256; it falls as
1/sqrt(images)), and sets that differ slightly score lower by about that floor
(a blur: 11.2 against the reference's 19.8). It is less noisy for comparing two
models on one small set, and is never reported as the SWD.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # /16 per axis: the separable 5x5 [1 4 6 4 1]^T [1 4 6 4 1] / 256


def as_image_batch(images, name: str) -> Tensor:
    """Check a uint8 (or 0-255 float) (N, H, W, 3) array/tensor; returned as a tensor, same layout and dtype
    (converted to float per batch later, so a large uint8 set is never held as float32 at once)."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"{name}: expected an (N, H, W, 3) RGB image array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: the image set is empty")
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: images contain NaN or infinite values")
    elif t.dtype != torch.uint8:
        raise ValueError(f"{name}: expected uint8 (or float on the 0-255 scale), got {t.dtype}")
    return t


def resolutions(height: int, width: int) -> list[int]:
    """The pyramid resolutions (the image's short side, halved down to 16)."""
    res, out = min(height, width), []
    while res >= MIN_RESOLUTION:
        out.append(res)
        res //= 2
    return out


def pyr_down(x: Tensor) -> Tensor:
    """5x5 binomial blur with mirror (reflect-101) borders, then every other pixel; x (B, C, H, W).

    Computed separably at the kept positions only (strided slices), which is
    the same sum as blurring everything and subsampling, in a quarter of the work."""
    h, w = x.shape[2], x.shape[3]
    xp = F.pad(x, (2, 2, 2, 2), mode="reflect")
    rows = sum(k * xp[:, :, :, o:o + w:2] for o, k in enumerate(_BINOMIAL)) / 16
    return sum(k * rows[:, :, o:o + h:2, :] for o, k in enumerate(_BINOMIAL)) / 16


def _up_axis(x: Tensor, dim: int) -> Tensor:
    """Zero-insert along `dim`, then the 1-D binomial x 2 with mirror borders, in polyphase form:
    even outputs (x[i-1] + 6 x[i] + x[i+1]) / 8, odd outputs (x[i] + x[i+1]) / 2. The mirror of
    the zero-inserted signal reflects x at the start (x[-1] = x[1]) and repeats it at the end."""
    n = x.shape[dim]
    xp = torch.cat([x.narrow(dim, 1, 1), x, x.narrow(dim, n - 1, 1)], dim)
    before, centre, after = xp.narrow(dim, 0, n), xp.narrow(dim, 1, n), xp.narrow(dim, 2, n)
    even = (before + 6 * centre + after) / 8
    odd = (centre + after) / 2
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


def pyr_up(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): zero insertion and the 5x5 binomial x 4, mirror borders."""
    return _up_axis(_up_axis(x, 2), 3)


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """x (B, 3, H, W) float on 0-255 -> `levels` tensors, finest first."""
    pyramid = [x]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])[:, :, :pyramid[-2].shape[2], :pyramid[-2].shape[3]]
    return pyramid


def random_centres(n_images: int, height: int, width: int, generator: torch.Generator,
                   per_image: int = NHOODS_PER_IMAGE, nhood: int = NHOOD_SIZE) -> Tensor:
    """(n_images * per_image, 2) integer (y, x) centres keeping the whole window inside."""
    half = nhood // 2
    if height < nhood or width < nhood:
        raise ValueError(f"level of {height}x{width} px is smaller than the {nhood}x{nhood} neighbourhood")
    ys = torch.randint(half, height - half, (n_images * per_image,), generator=generator)
    xs = torch.randint(half, width - half, (n_images * per_image,), generator=generator)
    return torch.stack([ys, xs], dim=1)


def descriptors(level: Tensor, centres: Tensor, per_image: int = NHOODS_PER_IMAGE,
                nhood: int = NHOOD_SIZE) -> Tensor:
    """level (B, 3, H, W), centres (B * per_image, 2) -> (B * per_image, 3, nhood, nhood)."""
    half = nhood // 2
    offsets = torch.arange(-half, half + 1, device=level.device)
    img = torch.arange(level.shape[0], device=level.device).repeat_interleave(per_image)
    centres = centres.to(level.device)
    ys = (centres[:, 0, None] + offsets)[:, :, None]   # (M, nhood, 1)
    xs = (centres[:, 1, None] + offsets)[:, None, :]   # (M, 1, nhood)
    patches = level.permute(0, 2, 3, 1)[img[:, None, None], ys, xs]  # (M, nhood, nhood, 3)
    return patches.permute(0, 3, 1, 2)


def normalise(desc: Tensor) -> Tensor:
    """(M, 3, n, n) -> (M, 3*n*n), per-channel zero mean and unit (population) std over the set."""
    desc = desc.double()
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return desc.float().reshape(desc.shape[0], -1)


def random_directions(dim: int, generator: torch.Generator, repeats: int = DIR_REPEATS,
                      per_repeat: int = DIRS_PER_REPEAT) -> Tensor:
    """(repeats, dim, per_repeat) unit vectors (Gaussian, normalised)."""
    dirs = torch.randn(repeats, dim, per_repeat, generator=generator, dtype=torch.float64)
    return (dirs / dirs.norm(dim=1, keepdim=True)).float()


def _sorted_projections(desc: Tensor, dirs: Tensor) -> Tensor:
    """(M, D) @ (R, D, P) -> (R, P, M), each row sorted. The sort dominates SWD; on CPU NumPy's
    vectorised sort along the contiguous axis is about 2.4x faster than torch.sort."""
    proj = (desc @ dirs).transpose(1, 2).contiguous()
    if proj.device.type == "cpu":
        return torch.from_numpy(np.sort(proj.numpy(), axis=-1))
    return torch.sort(proj, dim=-1).values


def sliced_distance(a: Tensor, b: Tensor, dirs: Tensor) -> float:
    """a, b (M, D) descriptors; dirs (R, D, P) -> mean over repeats of mean |sorted proj a - sorted proj b|."""
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    dirs = dirs.to(a.device)
    diff = (_sorted_projections(a, dirs) - _sorted_projections(b, dirs)).abs()
    return float(diff.mean(dim=(1, 2)).double().mean())


def swd_from_draws(real: Tensor, fake: Tensor, centres_real: list[Tensor], centres_fake: list[Tensor],
                   dirs: list[Tensor], *, batch_size: int = 64, device: str | torch.device | None = None
                   ) -> dict[str, float]:
    """SWD x 1e3 per level from explicit random draws; real, fake (N, H, W, 3) uint8 or 0-255 float."""
    levels = resolutions(real.shape[1], real.shape[2])
    per_level = []
    for centres_set, images in ((centres_real, real), (centres_fake, fake)):
        chunks: list[list[Tensor]] = [[] for _ in levels]
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device).permute(0, 3, 1, 2).float()
            for lod, level in enumerate(laplacian_pyramid(batch, len(levels))):
                rows = slice(start * NHOODS_PER_IMAGE, (start + batch.shape[0]) * NHOODS_PER_IMAGE)
                chunks[lod].append(descriptors(level, centres_set[lod][rows]))
        per_level.append([normalise(torch.cat(c)) for c in chunks])
    result = {}
    for lod, res in enumerate(levels):
        result[str(res)] = sliced_distance(per_level[0][lod], per_level[1][lod], dirs[lod]) * 1e3
    result["avg"] = float(np.mean([result[str(r)] for r in levels]))
    return result


def sliced_wasserstein(real, fake, *, seed: int = 0, device: str | torch.device | None = None,
                       batch_size: int = 64, independent_draws: bool = True) -> dict[str, float]:
    """SWD x 1e3 between two equally sized sets of uint8 (N, H, W, 3) images.

    Returns {"<resolution>": value, ..., "avg": mean over levels}, resolutions
    finest first (e.g. "256", "128", "64", "32", "16")."""
    a, b = as_image_batch(real, "real"), as_image_batch(fake, "fake")
    if a.shape != b.shape:
        raise ValueError(f"real and fake sets must have the same count and size, got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)} (N, H, W, 3)")
    n, h, w, _ = a.shape
    levels = resolutions(h, w)
    if not levels:
        raise ValueError(f"images of {h}x{w} px are smaller than the {MIN_RESOLUTION} px coarsest SWD level")
    gen = torch.Generator().manual_seed(seed)
    sizes = []
    lh, lw = h, w
    for _ in levels:
        sizes.append((lh, lw))
        lh, lw = (lh + 1) // 2, (lw + 1) // 2
    centres_real = [random_centres(n, sh, sw, gen) for sh, sw in sizes]
    centres_fake = ([random_centres(n, sh, sw, gen) for sh, sw in sizes] if independent_draws
                    else centres_real)
    dirs = [random_directions(3 * NHOOD_SIZE ** 2, gen) for _ in levels]
    return swd_from_draws(a, b, centres_real, centres_fake, dirs, batch_size=batch_size, device=device)
