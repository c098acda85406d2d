"""The floor under the CPU goals of issue 11: how many convolution FLOPs each workload does, and how long
they take at the best rate this machine reaches. Writes reports/bench/flops.json.

    python -m bench.flops [--level-size 512] [--train-size 512] [--infer-size 1024] [--profile paper]

FLOPs come from torch.utils.flop_counter (convolutions and matrix products, forward and backward,
checkpoint recomputes included; the PatchMatch kernels and element-wise work are not counted, so the
floor is a lower bound). The rate is the best of a large matrix product and the convolution shapes
that dominate the network, each timed here. `floor_s` = GFLOP / that rate: no implementation of the
same network on this machine's oneDNN runs faster, whatever else it does.

The workloads are those of bench/correspondence.py (one PatchMatch + GRU level, k = 16, 5 iterations,
32 channels, forward + backward) and bench/matcher.py (the whole correspondence network at the paper
profile: one pretrain step, and inference).
"""

from __future__ import annotations

import argparse
import json
import time

from bench.harness import ROOT, bench_config, inputs, machine, write_report

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
            rates[f"conv {cin}->{cout} {kh}x{kw} at {size}^2"] = rate(lambda: conv(x),
                                                                     2 * cin * cout * kh * kw * size**2)
    return {"per_shape": rates, "best": max(rates.values())}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def level_step(size: int, channels: int = 32):
    """One PatchMatch + GRU level forward + backward, on bench/correspondence.py's level and inputs."""
    import torch

    from bench.correspondence import benchmarked_level, level_inputs

    query, key, colors, init = level_inputs(size, channels)
    query.requires_grad_(True)
    level = benchmarked_level(channels).train()

    def step():
        warp = level(query, key, colors, init=init, generator=torch.Generator().manual_seed(0))[2]
        warp.abs().mean().backward()
    return step


def matcher_step(mode: str, size: int, profile: str):
    """One pretrain step (train) or one forward without gradient (infer), as bench/matcher.py runs them."""
    import torch

    from cocosnet.models.cocosnet import CoCosNet
    from cocosnet.train.trainer import CorrespondenceTrainer, sample_generators

    cfg = bench_config(profile)
    torch.manual_seed(0)
    model = CoCosNet.from_config(cfg)
    b = inputs(1, size, "cpu")
    if mode == "train":
        trainer = CorrespondenceTrainer(model, cfg.pretrain, cfg.loss_weights, device=torch.device("cpu"))
        model.train()
        return lambda: trainer.step(b, 1)
    model.eval()

    def infer():
        with torch.no_grad():
            model.matcher(b["label"], b["exemplar"], b["exemplar_label"],
                          generator=sample_generators(0, 1, b["index"], torch.device("cpu")))
    return infer


def measured(kind: str, size: int, profile: str) -> float | None:
    """The workload's time in reports/bench (quiet runs, batch 1, fp32, the CPU kernels on), if recorded."""
    name, field = MEASURED[kind]
    path = ROOT / "reports" / "bench" / name
    if not path.exists():
        return None
    for r in json.loads(path.read_text()).get("records", []):
        same = (r.get("kind") == "patchmatch" and r.get("cpu_kernels")) if kind == "level" else (
            r.get("mode") == kind and r.get("profile") == profile and r.get("batch") == 1 and r.get("amp") == "off")
        if same and r.get("size") == size and r.get("device") == "cpu" and field in r:
            return r[field]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level-size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--infer-size", type=int, default=1024)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", default="reports/bench/flops.json")
    args = parser.parse_args()
    rates = best_rate()
    print(json.dumps(rates), flush=True)
    workloads = {"level": (args.level_size, level_step(args.level_size)),
                 "train": (args.train_size, matcher_step("train", args.train_size, args.profile)),
                 "infer": (args.infer_size, matcher_step("infer", args.infer_size, args.profile))}
    records = []
    for kind, (size, step) in workloads.items():
        gflop, per_module = counted(step, split=kind == "infer")
        floor = gflop / rates["best"]
        now = measured(kind, size, args.profile)
        record = {"workload": kind, "size": size, "gflop": round(gflop, 1), "floor_s": round(floor, 1),
                  "goal_s": GOALS_S[kind], "goal_below_floor": GOALS_S[kind] < floor, "measured_s": now,
                  "measured_over_floor": None if now is None else round(now / floor, 2), "gflop_by_module": per_module}
        print(json.dumps(record), flush=True)
        records.append(record)
    write_report(ROOT / args.out, {
        "what": "convolution and matrix-product FLOPs per workload (torch.utils.flop_counter; forward, backward and "
                "checkpoint recomputes) and the time they need at the best rate measured here (floor_s); "
                "measured_s from reports/bench/correspondence.json and matcher.json",
        "profile": args.profile, "rate_gflops": rates, "machine": machine(), "records": records})


if __name__ == "__main__":
    main()
