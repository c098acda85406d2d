"""The whole correspondence network (both alignment U-Nets + every level): a training step at 512^2 and
inference at 512^2 and 1024^2, time and peak memory, each configuration in a fresh process.
Writes reports/bench/matcher.json (records of other devices/profiles in the file are kept).

    python -m bench.matcher [--profile paper] [--device cpu] [--batch 1] [--amp off|bfloat16]
                            [--configs train:512 infer:512 infer:1024] [--repeats 1] [--warmup 1]

The paper profile is the official network: widths 128/128/64/32, 32 matching channels, k = 16,
5 iterations per level. Inputs are random (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from bench.harness import (
    autocast,
    bench_config,
    in_fresh_process,
    inputs,
    machine,
    median_time,
    peak_mb,
    preloaded_allocator,
    reset_peak,
    write_report,
)
from cocosnet.measure.precision import trainer_precision

DEFAULT_CONFIGS = ("train:512", "infer:512", "infer:1024")


def child(mode: str, size: int, *, profile: str, device: str, batch: int, amp: str, repeats: int,
          warmup: int) -> dict:
    import torch

    from cocosnet.models.cocosnet import CoCosNet
    from cocosnet.models.kernels import extension
    from cocosnet.train.trainer import CorrespondenceTrainer, sample_generators

    extension()  # build or load the CPU kernels before any timing
    allocator = preloaded_allocator()

    cfg = bench_config(profile)
    torch.manual_seed(0)
    model = CoCosNet.from_config(cfg).to(device)
    b = inputs(batch, size, device)
    if mode == "train":
        pretrain = replace(cfg.pretrain, **trainer_precision(cfg.pretrain, amp))  # the trainer autocasts itself
        trainer = CorrespondenceTrainer(model, pretrain, cfg.loss_weights, device=torch.device(device))
        model.train()

        def step():
            trainer.step(b, 1)
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast(device, amp):
                gens = sample_generators(0, 1, b["index"], torch.device(device))
                model.matcher(b["label"], b["exemplar"], b["exemplar_label"], generator=gens)
    reset_peak(device)
    median, runs = median_time(step, device, repeats, warmup)
    return {"mode": mode, "size": size, "profile": profile, "device": device, "batch": batch, "amp": amp,
            "seconds": median, "runs": runs, "warmup": warmup, "peak_mb": peak_mb(device), "allocator": allocator,
            "params_m": sum(p.numel() for p in model.matcher.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--amp", default="off", choices=["off", "bfloat16", "float16"])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="mode:size, mode train|infer")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (lazy set-up)")
    parser.add_argument("--out", default="reports/bench/matcher.json")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = dict(profile=args.profile, device=args.device, batch=args.batch, amp=args.amp, repeats=args.repeats,
                  warmup=args.warmup)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), **common)))
        return
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    same = ("profile", "device", "batch", "amp")
    records = [r for r in previous.get("records", []) if any(r.get(k) != common[k] for k in same)]
    flags = ["--profile", args.profile, "--device", args.device, "--batch", str(args.batch), "--amp", args.amp,
             "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    for item in args.configs:
        mode, _, size = item.partition(":")
        if mode not in ("train", "infer") or not size.isdigit():
            parser.error(f"--configs: expected mode:size with mode train or infer, got {item!r}")
        record = in_fresh_process("bench.matcher", [mode, size, *flags],
                                  {"mode": mode, "size": int(size), **{k: common[k] for k in same}})
        print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
        records.append(record)
    write_report(out, {
        "what": "the whole correspondence network (two alignment U-Nets + dense level + 3 PatchMatch+GRU levels); "
                "train = one pretrain step (forward, backward, Adam); infer = forward without gradient; "
                "seconds = median over repeats; peak_mb = CUDA max allocated or CPU peak RSS of the process",
        "goals_cpu": {"train:512": {"seconds": 40, "peak_mb": 6144}, "infer:1024": {"seconds": 60, "peak_mb": 4096}},
        "machine": machine(), "records": records})


if __name__ == "__main__":
    main()
