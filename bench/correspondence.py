"""Correspondence benchmark: one PatchMatch + GRU level (k=16, 5 iterations), the bare
`patch_match` from a random start (inference only) and dense attention, forward and
forward+backward time and peak memory against resolution.
Each configuration runs in a fresh process (peak RSS on CPU, max allocated on CUDA).
Writes reports/bench/correspondence.json and reports/bench/correspondence.png.

    python -m bench.correspondence [--sizes 64 128 256 512] [--repeats 3] [--device cpu] [--amp off|bfloat16]

`--amp bfloat16` runs the level under autocast, as training with `amp_cpu` (or `amp` on CUDA) does; the search
and its scores stay fp32 there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cocosnet.measure.plots import plot_levels

DENSE_MAX = 128  # dense attention is O((HW)^2): 256^2 needs 16 GiB per matrix


def kernels_on(device: str) -> bool:
    """Whether the PatchMatch CPU kernels apply: on the CPU, unless switched off (models/kernels.py)."""
    from cocosnet.models.kernels import ENV

    return device == "cpu" and os.environ.get(ENV, "1") != "0"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def level_inputs(size: int, channels: int, device: str = "cpu"):
    """The level's inputs (seeded): L2-normalised query and key (1, C, size, size), key colours and an
    init one pixel-ish off the identity (1, size, size, 1, 2)."""
    import torch
    import torch.nn.functional as F

    from cocosnet.models.patchmatch import pixel_grid

    torch.manual_seed(0)
    query = F.normalize(torch.randn(1, channels, size, size, device=device), dim=1)
    key = F.normalize(torch.randn(1, channels, size, size, device=device), dim=1)
    colors = torch.rand(1, 3, size, size, device=device)
    grid = pixel_grid(1, size, size, query.device, query.dtype)
    init = (grid + torch.randn(grid.shape, device=device)).expand(1, size, size, 1, 2).contiguous()
    return query, key, colors, init


def benchmarked_level(channels: int):
    """The benchmarked level: k = 16, 5 iterations, the other settings PatchMatchGRU's defaults."""
    from cocosnet.models.patchmatch import PatchMatchGRU

    return PatchMatchGRU(channels, num_candidates=16, iters=5)


def child(kind: str, size: int, repeats: int, device: str, channels: int, amp: str = "off") -> dict:
    import torch

    from bench.harness import autocast, preloaded_allocator
    from cocosnet.models.kernels import extension
    from cocosnet.models.patchmatch import patch_match

    extension()  # build or load the CPU kernels before any timing
    allocator = preloaded_allocator()
    query, key, colors, init = level_inputs(size, channels, device)
    if kind == "patchmatch":
        level = benchmarked_level(channels).to(device)

        def forward():
            return level(query, key, colors, init=init, generator=torch.Generator(device).manual_seed(0))[2]
    elif kind == "search":
        level = None

        def forward():
            return patch_match(query, key, generator=torch.Generator(device).manual_seed(0))[1]
    else:
        level = None

        def forward():
            q, k = query.flatten(2), key.flatten(2)  # (B, C, HW)
            attn = torch.softmax(q.transpose(1, 2) @ k / 0.01, dim=-1)  # (B, HW, HW)
            return (colors.flatten(2) @ attn.transpose(1, 2)).view(1, 3, size, size)

    def run(train: bool) -> tuple[float, float]:
        if level is not None:
            level.train(train)
        q_ = query.requires_grad_(train)
        start = time.perf_counter()
        with torch.set_grad_enabled(train), autocast(device, amp):
            out = forward()
            mid = time.perf_counter()
            if train:
                out.abs().mean().backward()
        _sync(device)
        end = time.perf_counter()
        q_.grad = None
        return mid - start, end - start

    trains = kind != "search"  # the bare search is inference only
    if device.startswith("cuda"):
        run(False)  # warm-up kernels
        if trains:
            run(True)
        torch.cuda.reset_peak_memory_stats()
    infer = [run(False)[1] for _ in range(repeats)]
    result = {"kind": kind, "size": size, "device": device, "amp": amp, "repeats": repeats,
              "cpu_kernels": kernels_on(device), "allocator": allocator, "forward_s": statistics.median(infer),
              "runs_forward_s": infer}
    if trains:
        train = [run(True) for _ in range(repeats)]
        result |= {"forward_backward_s": statistics.median(t for _, t in train),
                   "train_forward_part_s": statistics.median(f for f, _ in train),
                   "runs_forward_backward_s": [t for _, t in train]}
    if device.startswith("cuda"):
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    from bench.harness import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--amp", default="off", choices=["off", "bfloat16"])
    parser.add_argument("--out", default="reports/bench/correspondence.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeats, args.device, args.channels,
                               args.amp)))
        return
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    # Records of another device, kernel setting or precision stay, so the paths can be compared in one file.
    setting = (args.device, kernels_on(args.device), args.amp)
    records = [r for r in previous.get("records", [])
               if (r.get("device"), r.get("cpu_kernels", False), r.get("amp", "off")) != setting]
    for size in args.sizes:
        for kind in ("patchmatch", "search", "dense"):
            if kind == "dense" and size > DENSE_MAX:
                continue
            cmd = [sys.executable, "-m", "bench.correspondence", "--child", kind, str(size),
                   "--repeats", str(args.repeats), "--device", args.device, "--channels", str(args.channels),
                   "--amp", args.amp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                record = {"kind": kind, "size": size, "device": args.device, "error": proc.stderr[-500:]}
            else:
                record = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in record.items() if not k.startswith("runs")}), flush=True)
            records.append(record)
    result = {
        "what": "one PatchMatch+GRU level (k=16, 5 iterations, 32-ch features), the bare patch_match from a "
                "random start (forward only) and dense attention; batch 1; amp: fp32 (off) or bf16 autocast",
        "target_512": {"patchmatch": {"forward_backward_s": 5.0, "peak_mb": 1024.0},
                       "search": {"forward_s": 10.0, "peak_mb": 1024.0}},
        "machine": machine(),
        "records": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot_levels(records, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
