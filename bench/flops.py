"""The floor under the CPU goals: how many convolution FLOPs each workload does, and how long
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

from bench.harness import ROOT, bench_config, inputs, machine, write_report
from cocosnet.measure.flops import GOALS_S, best_rate, counted, measured


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
        now = measured(kind, size, args.profile, ROOT)
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
