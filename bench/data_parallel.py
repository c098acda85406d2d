"""Two cores, two ways: one process with 2 threads against two DDP processes (gloo) with 1 thread each,
for the demo's pretrain step and GAN step at the same global batch. Writes reports/bench/data_parallel.json.

    python -m bench.data_parallel [--profile demo] [--size 64] [--batch 4] [--repeats 6] [--rounds 3]

The demo's training tensors are small (64 px, batch 4), so one process spends much of a step in
per-operator overhead that a second thread cannot share; two processes each run half the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from bench.harness import bench_config, in_fresh_process, inputs, machine, median_time, peak_mb, write_report

LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # processes x threads


def worker(stage: str, *, profile: str, size: int, batch: int, repeats: int) -> None:
    import torch

    from cocosnet.losses.vgg import load_vgg19
    from cocosnet.models.cocosnet import CoCosNet, build_discriminator
    from cocosnet.train import distributed
    from cocosnet.train.trainer import CorrespondenceTrainer, GanTrainer

    info = distributed.setup()
    cfg = bench_config(profile)
    torch.manual_seed(0)
    model = CoCosNet.from_config(cfg).train()
    cpu = torch.device("cpu")
    if stage == "pretrain":
        trainer = CorrespondenceTrainer(model, cfg.pretrain, cfg.loss_weights, device=cpu, distributed=info.world > 1)
    else:
        trainer = GanTrainer(model, build_discriminator(cfg), load_vgg19("random"), cfg.train, cfg.loss_weights,
                             device=cpu, distributed=info.world > 1)
    per_rank = batch // info.world
    b = inputs(per_rank, size, "cpu", seed=info.rank)
    b["index"] = b["index"] + info.rank * per_rank
    median, runs = median_time(lambda: trainer.step(b, 1), "cpu", repeats, warmup=1)
    if info.is_main:
        print(json.dumps({"stage": stage, "processes": info.world, "threads": torch.get_num_threads(),
                          "step_s": median, "runs": runs, "peak_mb_rank0": peak_mb("cpu")}), flush=True)
    distributed.teardown()


def launch(layout: str, stage: str, flags: list[str]) -> dict:
    procs, threads = LAYOUTS[layout]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
    record = in_fresh_process("bench.data_parallel", [stage, *flags], {"stage": stage}, launcher=launcher, env=env)
    return {"layout": layout, **record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="processes per layout and stage (interleaved)")
    parser.add_argument("--stages", default="pretrain,train")
    parser.add_argument("--out", default="reports/bench/data_parallel.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = dict(profile=args.profile, size=args.size, batch=args.batch, repeats=args.repeats)
    if args.child:
        worker(args.child, **common)
        return
    flags = [f"--{k}={v}" for k, v in common.items()]
    records = []
    for _ in range(args.rounds):  # interleaved: the machine drifts
        for stage in args.stages.split(","):
            for layout in LAYOUTS:
                record = launch(layout, stage, flags)
                print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
                records.append(record)
    medians = {}
    for stage in args.stages.split(","):
        for layout in LAYOUTS:
            times = [r["step_s"] for r in records if r["stage"] == stage and r["layout"] == layout and "step_s" in r]
            if times:
                medians.setdefault(stage, {})[layout] = statistics.median(times)
    write_report(Path(args.out), {
        "what": "one training step at the same global batch; step_s = median of repeats in one launch; "
                "median_step_s = median over the launches of a layout (interleaved); layouts are processes x threads",
        "machine": machine(), **common, "records": records, "median_step_s": medians,
        "speedup_2x1_over_1x2": {s: m["1x2"] / m["2x1"] for s, m in medians.items() if len(m) == 2}})


if __name__ == "__main__":
    main()
