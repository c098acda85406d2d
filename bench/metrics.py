"""Metrics benchmark: SWD throughput at 256x256 (ours, torch, vs a straightforward NumPy/SciPy
transcription of the PGGAN reference, the one in tests/test_swd.py) and SSIM throughput.
Writes reports/bench/metrics.json.

    python -m bench.metrics [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cocosnet.metrics.paired import ssim
from cocosnet.metrics.swd import resolutions, sliced_wasserstein
from cocosnet.metrics.swd_reference import np_swd


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 16, size // 16, 3)).astype(np.float32)
    smooth = np.kron(base, np.ones((1, 16, 16, 1), np.float32))
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def reference_swd(real: np.ndarray, fake: np.ndarray, seed: int) -> float:
    """The reference's draws (NumPy RandomState) and its per-level computation."""
    rng = np.random.RandomState(seed)
    n, levels = len(real), resolutions(real.shape[1], real.shape[2])
    centres = [[np.stack([rng.randint(3, r - 3, n * 128), rng.randint(3, r - 3, n * 128)], 1) for r in levels]
               for _ in range(2)]
    dirs = []
    for _ in levels:
        d = rng.randn(4, 147, 128)
        dirs.append((d / np.sqrt((d ** 2).sum(1, keepdims=True))).astype(np.float32))
    return float(np_swd(real, fake, centres[0], centres[1], dirs)[-1])


def ssim_five_convolutions(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The textbook form, one grouped convolution per blurred map: the baseline for ours."""
    x, y = (a + 1) * 127.5, (b + 1) * 127.5
    g = torch.exp(-(torch.arange(11.0) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=3)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).flatten(1).mean(1)


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/bench/metrics.json")
    args = parser.parse_args()
    real, fake = _images(args.images, args.size, 0), _images(args.images, args.size, 1)
    n = args.images

    t_ours, ours = _median_time(lambda: sliced_wasserstein(real, fake, seed=0), args.repeats)
    t_ind, ours_ind = _median_time(lambda: sliced_wasserstein(real, fake, seed=0, independent_draws=True),
                                   args.repeats)
    t_ref, ref = _median_time(lambda: reference_swd(real, fake, 0), args.repeats)
    # Both sets are read once per call, so a call processes 2n images.
    result = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__, "device": "cpu"},
        "swd": {
            "images_per_set": n, "size": args.size, "repeats": args.repeats,
            "ours_s": t_ours, "ours_images_per_s": 2 * n / t_ours,
            "ours_independent_draws_s": t_ind, "ours_independent_draws_images_per_s": 2 * n / t_ind,
            "numpy_reference_s": t_ref, "numpy_reference_images_per_s": 2 * n / t_ref,
            "speedup_vs_reference": t_ref / t_ours,
            "avg_ours": ours["avg"], "avg_ours_independent_draws": ours_ind["avg"], "avg_reference": ref,
        },
    }
    a = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 127.5 - 1
    b = torch.from_numpy(fake).permute(0, 3, 1, 2).float() / 127.5 - 1
    t_ssim, ours_ssim = _median_time(lambda: ssim(a, b), args.repeats)
    t_base, base_ssim = _median_time(lambda: ssim_five_convolutions(a, b), args.repeats)
    result["ssim"] = {"images": n, "size": args.size, "seconds": t_ssim, "pairs_per_s": n / t_ssim,
                      "five_convolutions_pairs_per_s": n / t_base, "speedup": t_base / t_ssim,
                      "max_abs_difference": float((ours_ssim - base_ssim).abs().max())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
