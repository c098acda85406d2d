"""`torch.compile` on the score and warp ops: the tensor code compiled by Inductor against the same code
eager and against the C++ CPU kernels, forward only, at one level's size. Also whether the custom ops
themselves trace into a compiled graph (`fullgraph=True`, through their fake implementations). Writes
reports/bench/compile_ops.json.

    python -m bench.compile_ops [--size 256] [--channels 49] [--candidates 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import machine, write_report
from cocosnet.models import kernels, ops


def timed(fn, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=49)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="reports/bench/compile_ops.json")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    s, c, k = args.size, args.channels, args.candidates
    query = F.normalize(torch.randn(1, c, s, s, generator=g), dim=1)
    key = F.normalize(torch.randn(1, c, s, s, generator=g), dim=1)
    coords = torch.rand(1, s, s, k, 2, generator=g) * (s - 1)
    weights = torch.softmax(torch.randn(1, s, s, k, generator=g), dim=-1)
    colors = torch.rand(1, 3, s, s, generator=g)
    work = {"scores": (ops._candidate_scores, ops.candidate_scores, (query, key, coords)),
            "warp": (ops._weighted_sample, ops.weighted_sample, (colors, coords, weights))}
    results = {}
    with torch.no_grad():
        for name, (tensor_code, op, inputs) in work.items():
            eager = tensor_code(*inputs)
            start = time.perf_counter()
            compiled_fn = torch.compile(tensor_code, dynamic=False)
            compiled = compiled_fn(*inputs)
            compile_s = time.perf_counter() - start
            kernel_inputs = (ops.search_layout(inputs[0]), *inputs[1:]) if name == "scores" else inputs
            row = {"eager_s": timed(lambda tc=tensor_code, i=inputs: tc(*i), args.repeats),
                   "compiled_s": timed(lambda f=compiled_fn, i=inputs: f(*i), args.repeats),
                   "compile_s": compile_s,
                   "compiled_max_abs_diff": float((compiled - eager).abs().max())}
            if kernels.extension() is not None:
                row["cpu_kernel_s"] = timed(lambda o=op, i=kernel_inputs: o(*i), args.repeats)
            try:
                traced = torch.compile(op, fullgraph=True, dynamic=False)(*inputs)
                row["op_traces_fullgraph"] = bool(torch.allclose(traced, op(*inputs), atol=1e-5))
            except Exception as error:  # recorded, not fatal: the question is whether it works
                row["op_traces_fullgraph"] = f"no: {type(error).__name__}: {str(error)[:200]}"
            results[name] = row
            print(name, row, flush=True)
    write_report(Path(args.out), {
        "what": f"forward only, no autograd, batch 1, {s}^2, {c} channels, {k} candidates; medians of "
                f"{args.repeats} after one warm-up; compile_s includes the first call",
        "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
