"""One full GAN training step (G step with every loss, D step, both Adams, EMA) at 256^2 and 512^2,
with a per-part breakdown, each size in a fresh process. Writes reports/bench/train_step.json
(records of other devices/profiles/batches in the file are kept).

    python -m bench.train_step [--profile paper] [--sizes 256 512] [--device cpu] [--batch 1]
                               [--amp off|bfloat16] [--repeats 1] [--warmup 1] [--top-ops N]

The parts are timed one at a time on the same inputs, each forward + backward:
  matcher        both alignment U-Nets and the correspondence, on the warp/alignment/cycle terms;
  generator      the SPADE generator from the (detached) warps and label;
  vgg            VGG19 on fake, real and exemplar with the fm, perceptual and contextual terms;
  discriminator  D on the fake for G's GAN terms, plus the D step on fake and real.
`other_s` is the full step less the parts: the optimisers, the EMA, gradient clipping, the
loss bookkeeping. `--top-ops N` profiles one more full step (torch.profiler) and records, as `profile`,
the N ops with the most self time on the device (CPU time on a CPU) and, on CUDA, the N kernels
with the most time and the device's busy time against the wall time.
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

PARTS = ("matcher", "generator", "vgg", "discriminator")


def _parts(trainer, b: dict, device: str, amp: str) -> dict:
    """name -> a callable running that part's forward and backward."""
    import torch

    from cocosnet.losses.objective import correspondence_terms, discriminator_terms
    from cocosnet.losses.terms import (
        gan_feature_loss,
        gan_generator_loss,
        perceptual_loss,
        vgg_contextual_loss,
        vgg_feature_matching_loss,
        weighted_total,
    )
    from cocosnet.train.trainer import sample_generators

    model, disc, vgg, weights = trainer.model, trainer.disc, trainer.vgg, trainer.weights
    gens = sample_generators(0, 1, b["index"], torch.device(device))
    with torch.no_grad(), autocast(device, amp):
        match = model.matcher(b["label"], b["exemplar"], b["exemplar_label"], generator=gens)
        warps = [w.detach() for w in match.correspondence.warps]
        fake = model.generate(warps, b["label"])

    def matcher():
        with autocast(device, amp):
            out = model.matcher(b["label"], b["exemplar"], b["exemplar_label"], real=b["image"], cycle=True,
                                generator=gens)
            loss = weighted_total(correspondence_terms(out, real=b["image"], exemplar=b["exemplar"],
                                                       self_ref=b["self_ref"]), weights)
        loss.backward()

    def generator():
        with autocast(device, amp):
            loss = model.generate(warps, b["label"]).float().abs().mean()
        loss.backward()

    def vgg_part():
        x = fake.detach().float().requires_grad_(True)
        with autocast(device, amp):
            fake_vgg = vgg(x)
            with torch.no_grad():
                real_vgg, exemplar_vgg = vgg(b["image"]), vgg(b["exemplar"])
            loss = (vgg_feature_matching_loss(fake_vgg, real_vgg, b["self_ref"]) + perceptual_loss(fake_vgg, real_vgg)
                    + vgg_contextual_loss(fake_vgg, exemplar_vgg))
        loss.backward()

    def discriminator():
        x = fake.detach().float().requires_grad_(True)
        with autocast(device, amp):
            fake_d = disc(torch.cat([b["label"], x], 1))
            with torch.no_grad():
                real_d = disc(torch.cat([b["label"], b["image"]], 1))
            g_loss = gan_generator_loss(fake_d) + gan_feature_loss(fake_d, real_d)
        g_loss.backward()
        with autocast(device, amp):
            d_loss = discriminator_terms(x.detach(), label=b["label"], real=b["image"], disc=disc)["gan"]
        d_loss.backward()

    return {"matcher": matcher, "generator": generator, "vgg": vgg_part, "discriminator": discriminator}


def top_ops(step, device: str, n: int) -> dict:
    """One call of `step` under torch.profiler: the n ops (aten level) with the most self time on the
    device, and on CUDA also the n kernels with the most time and the device's busy time against the
    wall time (busy well under wall means the step waits on the host: launch-bound)."""
    import time

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start

    def self_us(event) -> float:
        if not cuda:
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)

    def table(events) -> list[dict]:
        events = sorted(events, key=self_us, reverse=True)
        total = sum(self_us(e) for e in events) or 1.0
        return [{"name": e.key, "calls": e.count, "self_ms": round(self_us(e) / 1e3, 3),
                 "share": round(self_us(e) / total, 4)} for e in events[:n]]

    averages = prof.key_averages()
    host = [e for e in averages if e.device_type == DeviceType.CPU]
    result = {"wall_ms": round(wall * 1e3, 1), "ops": table(host)}
    if cuda:
        kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
        result["kernels"] = table(kernels)
        result["device_busy_ms"] = round(sum(self_us(e) for e in kernels) / 1e3, 1)
    return result


def child(size: int, *, profile: str, device: str, batch: int, amp: str, repeats: int, warmup: int,
          top: int = 0) -> dict:
    import torch

    from cocosnet.losses.vgg import load_vgg19
    from cocosnet.models.cocosnet import CoCosNet, build_discriminator
    from cocosnet.models.kernels import extension
    from cocosnet.train.trainer import GanTrainer

    extension()  # build or load the CPU kernels before any timing
    allocator = preloaded_allocator()

    cfg = bench_config(profile)
    torch.manual_seed(0)
    dev = torch.device(device)
    model, disc = CoCosNet.from_config(cfg).to(dev), build_discriminator(cfg).to(dev)
    vgg = load_vgg19("random").to(dev)
    train_cfg = replace(cfg.train, **trainer_precision(cfg.train, amp))
    trainer = GanTrainer(model, disc, vgg, train_cfg, cfg.loss_weights, device=dev)
    model.train()
    b = inputs(batch, size, device)
    reset_peak(device)
    full, runs = median_time(lambda: trainer.step(b, 1), device, repeats, warmup)
    peak = peak_mb(device)
    parts = {}
    for name, fn in _parts(trainer, b, device, amp).items():
        parts[name], _ = median_time(fn, device, repeats, warmup)
        model.zero_grad(set_to_none=True)
        disc.zero_grad(set_to_none=True)
    record = {"size": size, "profile": profile, "device": device, "batch": batch, "amp": amp,
              "step_s": full, "runs": runs, "warmup": warmup, "peak_mb": peak, "allocator": allocator,
              "parts_s": parts,
              "other_s": full - sum(parts.values()),
              "share": {k: v / full for k, v in parts.items()}}
    if top:
        record["profile"] = top_ops(lambda: trainer.step(b, 1), device, top)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--amp", default="off", choices=["off", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--top-ops", type=int, default=0, metavar="N",
                        help="profile one more step and record the N ops with the most device self time")
    parser.add_argument("--out", default="reports/bench/train_step.json")
    parser.add_argument("--child", type=int, metavar="SIZE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = dict(profile=args.profile, device=args.device, batch=args.batch, amp=args.amp)
    timing = dict(repeats=args.repeats, warmup=args.warmup)
    if args.child:
        print(json.dumps(child(args.child, **common, **timing, top=args.top_ops)))
        return
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    records = [r for r in previous.get("records", []) if any(r.get(k) != v for k, v in common.items())]
    flags = [f"--{k}={v}" for k, v in {**common, **timing, "top-ops": args.top_ops}.items()]
    for size in args.sizes:
        record = in_fresh_process("bench.train_step", [str(size), *flags], {"size": size, **common})
        print(json.dumps({k: v for k, v in record.items() if k != "runs"}), flush=True)
        records.append(record)
    write_report(out, {
        "what": "one GAN training step (G step with every loss + D step + Adam + EMA) and its parts, each forward "
                "+ backward; seconds are medians over repeats; peak_mb = CUDA max allocated or CPU peak RSS",
        "goal_gpu": {"size": 512, "batch": 4, "amp": "bfloat16", "step_s": 0.5},
        "machine": machine(), "records": records})


if __name__ == "__main__":
    main()
