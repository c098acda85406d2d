"""Activation checkpointing in the PatchMatch levels: the pretrain step with the size threshold
(`models/checkpointing.py`, checkpoint only large chunks and updates) against checkpointing everything
(the previous behaviour), time and peak memory, each in a fresh process. Writes
reports/bench/checkpointing.json.

    python -m bench.checkpointing [--profile demo] [--size 64] [--batch 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.harness import bench_config, in_fresh_process, inputs, machine, median_time, peak_mb, write_report


def child(policy: str, *, profile: str, size: int, batch: int, repeats: int) -> dict:
    import torch

    from cocosnet.models import checkpointing
    from cocosnet.models.cocosnet import CoCosNet
    from cocosnet.train.trainer import CorrespondenceTrainer

    if policy == "always":
        checkpointing.CHECKPOINT_MIN_ELEMENTS = 0
    cfg = bench_config(profile)
    torch.manual_seed(0)
    model = CoCosNet.from_config(cfg).train()
    trainer = CorrespondenceTrainer(model, cfg.pretrain, cfg.loss_weights, device=torch.device("cpu"))
    b = inputs(batch, size, "cpu")
    median, runs = median_time(lambda: trainer.step(b, 1), "cpu", repeats, warmup=1)
    return {"policy": policy, "profile": profile, "size": size, "batch": batch, "step_s": median, "runs": runs,
            "peak_mb": peak_mb("cpu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="processes per policy")
    parser.add_argument("--out", default="reports/bench/checkpointing.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = dict(profile=args.profile, size=args.size, batch=args.batch, repeats=args.repeats)
    if args.child:
        print(json.dumps(child(args.child, **common)))
        return
    flags = [f"--{k}={v}" for k, v in common.items()]
    records = []
    for policy in ("threshold", "always") * args.rounds:  # interleaved: the machine drifts
        record = in_fresh_process("bench.checkpointing", [policy, *flags], {"policy": policy})
        print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
        records.append(record)
    ok = [r for r in records if "step_s" in r]
    medians = {p: statistics.median(r["step_s"] for r in ok if r["policy"] == p) for p in ("threshold", "always")
               if any(r["policy"] == p for r in ok)}
    write_report(Path(args.out), {
        "what": "pretrain step (forward, backward, Adam); step_s = median of repeats in one process; "
                "median_step_s = median over the processes of a policy (interleaved)",
        "machine": machine(), "records": records,
        "median_step_s": medians,
        "speedup_threshold_over_always": medians["always"] / medians["threshold"] if len(medians) == 2 else None})


if __name__ == "__main__":
    main()
