"""Candidate scoring kernels: the project's `candidate_scores` (grid_sample + product) against computing
the 4 bilinear corners' dot products from a channels-last gather and combining them (exact up to
rounding). Writes reports/bench/score_kernels.json.

    python -m bench.score_kernels [--size 256] [--channels 32] [--k 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import machine, median_time, write_report
from cocosnet.models.patchmatch import candidate_scores, pixel_grid


def gathered_scores(query: torch.Tensor, key: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """query (B, C, H, W), key (B, C, Hk, Wk), coords (B, H, W, K, 2) -> (B, H, W, K)."""
    b, c, hk, wk = key.shape
    _, h, w, k, _ = coords.shape
    rows = key.permute(0, 2, 3, 1).reshape(b * hk * wk, c)  # channels last: one row per key pixel
    q = query.permute(0, 2, 3, 1).reshape(b, h * w, 1, c)
    x, y = coords[..., 0], coords[..., 1]
    x0, y0 = x.floor().clamp(0, wk - 1), y.floor().clamp(0, hk - 1)
    fx, fy = x - x0, y - y0
    x1, y1 = (x0 + 1).clamp(max=wk - 1), (y0 + 1).clamp(max=hk - 1)
    base = torch.arange(b).view(b, 1, 1, 1) * hk * wk
    out = torch.zeros(b, h, w, k)
    for yy, xx, weight in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)), (y1, x0, (1 - fx) * fy),
                           (y1, x1, fx * fy)):
        index = (base + yy.long() * wk + xx.long()).reshape(-1)
        corner = rows[index].view(b, h * w, k, c)
        out += (corner * q).sum(-1).view(b, h, w, k) * weight
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/bench/score_kernels.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    s, c = args.size, args.channels
    query = F.normalize(torch.randn(1, c, s, s), dim=1)
    key = F.normalize(torch.randn(1, c, s, s), dim=1)
    coords = (pixel_grid(1, s, s, query.device, query.dtype) + torch.randn(1, s, s, args.k, 2) * 3).clamp(0, s - 1)
    result = {"what": f"scores of {args.k} candidates per pixel at {s}^2, {c} channels, no gradient",
              "machine": machine()}
    with torch.no_grad():
        for name, fn in (("grid_sample", candidate_scores), ("gather_4_corners", gathered_scores)):
            result[f"{name}_s"], _ = median_time(lambda fn=fn: fn(query, key, coords), "cpu", args.repeats)
        diff = candidate_scores(query, key, coords) - gathered_scores(query, key, coords)
        result["max_abs_diff"] = diff.abs().max().item()
    result["gather_over_grid_sample"] = result["gather_4_corners_s"] / result["grid_sample_s"]
    print(result)
    write_report(Path(args.out), result)


if __name__ == "__main__":
    main()
