"""FLOP counts and this machine's best rate: the floor under a workload's time (bench/flops.py).

FLOPs come from torch.utils.flop_counter (convolutions and matrix products, forward and backward,
checkpoint recomputes included; the PatchMatch kernels and element-wise work are not counted, so the
floor is a lower bound). The rate is the best of a large matrix product and the convolution shapes
that dominate the network, each timed here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# (in, out, size, kernel): the official decoder's SPADE convolutions at full and half resolution,
# a separable GRU gate and the GRU's 7x7 offset encoder at 256^2, and a 20-channel SPADE input layer.
CONV_SHAPES = ((128, 128, 256, (3, 3)), (128, 64, 512, (3, 3)), (64, 64, 512, (3, 3)), (96, 32, 256, (1, 5)),
               (32, 64, 256, (7, 7)), (20, 128, 512, (3, 3)))
GEMM_SIZE = 2048
GOALS_S = {"level": 5.0, "train": 40.0, "infer": 60.0}
MEASURED = {"level": ("correspondence.json", "forward_backward_s"), "train": ("matcher.json", "seconds"),
            "infer": ("matcher.json", "seconds")}


def counted(fn, *, split: bool) -> tuple[float, dict[str, float]]:
    """(total GFLOP of one call of fn, GFLOP per top-level child module if `split`). Split only calls
    without backward: backward and checkpoint recomputes are not attributed to modules reliably."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2:
            per_module[parts[1]] = round(sum(ops.values()) / 1e9, 1)
    return counter.get_total_flops() / 1e9, per_module if split else {}


def best_rate(repeats: int = 5, shapes=CONV_SHAPES, gemm: int = GEMM_SIZE) -> dict:
    """GFLOP/s of a square fp32 matrix product and of each convolution shape, forward, best of repeats."""
    import torch

    def rate(fn, flop: float) -> float:
        fn()
        best = min(_seconds(fn) for _ in range(repeats))
        return float(f"{flop / best / 1e9:.4g}")  # significant digits: a tiny shape on a busy machine is not 0

    a, b = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    rates = {"gemm": rate(lambda: a @ b, 2 * gemm**3)}
    with torch.no_grad():
        for cin, cout, size, (kh, kw) in shapes:
            conv = torch.nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))
            x = torch.randn(1, cin, size, size)
            rates[f"conv {cin}->{cout} {kh}x{kw} at {size}^2"] = rate(lambda conv=conv, x=x: conv(x),
                                                                     2 * cin * cout * kh * kw * size**2)
    return {"per_shape": rates, "best": max(rates.values())}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measured(kind: str, size: int, profile: str, root: Path) -> float | None:
    """The workload's time in <root>/reports/bench (quiet runs, batch 1, fp32, the CPU kernels on), if recorded."""
    name, field = MEASURED[kind]
    path = root / "reports" / "bench" / name
    if not path.exists():
        return None
    for r in json.loads(path.read_text()).get("records", []):
        same = (r.get("kind") == "patchmatch" and r.get("cpu_kernels")) if kind == "level" else (
            r.get("mode") == kind and r.get("profile") == profile and r.get("batch") == 1 and r.get("amp") == "off")
        if same and r.get("size") == size and r.get("device") == "cpu" and field in r:
            return r[field]
    return None
