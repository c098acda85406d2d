"""Quick generator experiments: train the GAN stage from a pretrain model with `-S key=value`
overrides, probing the output against the finest warp as it trains, then evaluate it exactly as the
evaluate stage does (JPGs, val self pairs for L1/PSNR/SSIM, val ref pairs for SWD).

    python -m stages.study_generation --name recon -S loss_weights.recon=10.0 [--steps 170]
    python -m stages.study_generation --table      # the filed runs as a Markdown table

Writes reports/study/generation_demo/<name>.json: the overrides, the probes (L1 of the output and of
the finest warp on the background, on body pixels with a true match in the exemplar and on body
pixels without one, plus PSNR and SSIM; EMA weights, as evaluated), each loss term's share of the
weighted generator loss, the final metrics and the minutes. Needs the params file's data stages and
its pretrain model (`dvc repro pretrain`). The measuring tool of docs/studies/generation.md, not a
pipeline stage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cocosnet.config import config_from_dict, read_yaml
from cocosnet.data.dataset import PairDataset
from cocosnet.evaluate import eval_pairs, evaluate
from cocosnet.io import atomic_write_json
from cocosnet.metrics.correspondence import batch_regions
from cocosnet.metrics.paired import l1, psnr, ssim
from cocosnet.models.blocks import resize_to
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import load_checkpoint
from cocosnet.train.distributed import DistInfo
from cocosnet.train.inputs import TRAIN
from cocosnet.train.loop import batches, build
from stages.study_recipe import with_overrides


def probe_batch(cfg, pairs: pd.DataFrame, count: int) -> tuple[dict, dict]:
    """The first `count` val self pairs as one batch, centre-cropped, and their region masks."""
    table = eval_pairs(pairs, count, "self")
    dataset = PairDataset(table, Path(cfg.data.processed), load_size=cfg.data.load_size,
                          crop_size=cfg.data.crop_size, random_crop=False)
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    regions = batch_regions(Path(cfg.data.root), table, batch, load_size=cfg.data.load_size, crop=cfg.data.crop_size)
    return batch, regions


def region_l1(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |image - target| (0-1 scale, mean over RGB) over the pixels of `mask`."""
    err = ((image.clamp(-1, 1) - target).abs().mean(1) / 2)[mask]
    return float(err.mean()) if err.numel() else float("nan")


@torch.no_grad()
def probe(model: CoCosNet, batch: dict, regions: dict, step: int) -> dict:
    model.eval()
    gen = torch.Generator().manual_seed(0)
    out = model(batch["label"], batch["exemplar"], batch["exemplar_label"], generator=gen)
    model.train()
    target = batch["image"]
    finest = resize_to(out.correspondence.warps[-1], tuple(target.shape[-2:]), "bilinear")
    row: dict = {"step": step}
    for who, image in (("output", out.image), ("warp", finest)):
        row[who] = {"l1": float(l1(image, target).mean()), "psnr": float(psnr(image, target).mean()),
                    "ssim": float(ssim(image, target).mean()),
                    **{f"l1_{name}": region_l1(image, target, mask) for name, mask in regions.items()}}
    return row


def table(folder: Path) -> str:
    """The filed runs, oldest first: the final metrics of the output against the finest warp."""
    rows = ["| run | overrides | steps | L1 (warp) | PSNR (warp) | SSIM (warp) | SWD (warp) | min |", "|---" * 8 + "|"]
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        r = json.loads(path.read_text(encoding="utf-8"))
        if "paired" not in r:
            continue
        p, s = r["paired"], r["swd"]
        cells = [f"{p['model'][m]:{f}} ({p['finest_warp'][m]:{f}})" for m, f in (("l1", ".4f"), ("psnr", ".2f"),
                                                                              ("ssim", ".3f"))]
        rows.append(f"| {r['name']} | {' '.join(r['overrides']) or '-'} | {r['steps']} | {' | '.join(cells)} | "
                    f"{s['model']:.1f} ({s['finest_warp']:.1f}) | {r['train_minutes']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print the filed runs of --out as a Markdown table")
    ap.add_argument("--name")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--init", default="models/pretrain.pt")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=0, help="train.steps (0: the params file's)")
    ap.add_argument("--probe-every", type=int, default=25)
    ap.add_argument("--probe-pairs", type=int, default=32)
    ap.add_argument("--no-eval", action="store_true", help="probes only, no JPG evaluation")
    ap.add_argument("--out", default="reports/study/generation_demo")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    if not args.name:
        ap.error("--name is required to train")
    steps = [f"train.steps={args.steps}"] if args.steps else []
    cfg = config_from_dict(with_overrides(read_yaml(args.params), [*steps, *args.overrides]))
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    device = torch.device("cpu")
    trainer = build(cfg, TRAIN, device, distributed=False)
    state = load_checkpoint(Path(args.init))["model"]
    trainer.model.matcher.load_state_dict({k[len("matcher."):]: v for k, v in state.items()
                                           if k.startswith("matcher.")})
    trainer.reset_ema()
    batch, regions = probe_batch(cfg, pairs, args.probe_pairs)
    probes = [probe(trainer.final_model(), batch, regions, 0)]
    weights = trainer.weights
    sums: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    trainer.model.train()
    loader = batches(cfg, TRAIN, pairs, DistInfo(0, 1, device), 0)
    for step, b in zip(range(1, cfg.train.steps + 1), loader):
        metrics = trainer.step(b, step)
        for k, w in weights.items():
            if k in metrics:
                sums[k] += w * metrics[k] / cfg.train.steps
        if step % args.probe_every == 0 or step == cfg.train.steps:
            probes.append(probe(trainer.final_model(), batch, regions, step))
            p = probes[-1]
            print(f"{args.name} step {step}: output l1 {p['output']['l1']:.4f} ssim {p['output']['ssim']:.3f} | "
                  f"warp l1 {p['warp']['l1']:.4f} ssim {p['warp']['ssim']:.3f}", flush=True)
    minutes = (time.perf_counter() - start) / 60
    total = sum(abs(v) for v in sums.values()) or 1.0
    report = {"name": args.name, "overrides": args.overrides, "steps": cfg.train.steps,
              "train_minutes": round(minutes, 2), "probe_pairs": args.probe_pairs,
              "weighted_terms": {k: round(v, 5) for k, v in sums.items()},
              "term_share": {k: round(abs(v) / total, 4) for k, v in sums.items()}, "probes": probes}
    if not args.no_eval:
        torch.manual_seed(cfg.eval.seed)
        untrained = CoCosNet.from_config(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            metrics, _ = evaluate(cfg, trainer.final_model(), untrained, pairs, device=device, outputs=Path(tmp) / "out")
        report["paired"] = {who: {m: metrics["paired"][m][who] for m in ("l1", "psnr", "ssim")}
                            for who in ("model", "finest_warp", "copy_exemplar")}
        report["swd"] = {who: metrics["swd"][who] for who in ("model", "finest_warp", "copy_exemplar")}
        report["epe_px"] = metrics.get("correspondence", {}).get("epe_px", {}).get("trained")
        p, s = report["paired"], report["swd"]
        print(f"{args.name}: L1 {p['model']['l1']:.4f} (warp {p['finest_warp']['l1']:.4f})  PSNR {p['model']['psnr']:.2f} "
              f"({p['finest_warp']['psnr']:.2f})  SSIM {p['model']['ssim']:.3f} ({p['finest_warp']['ssim']:.3f})  "
              f"SWD {s['model']:.1f} ({s['finest_warp']:.1f})  {minutes:.1f} min", flush=True)
    atomic_write_json(Path(args.out) / f"{args.name}.json", report)


if __name__ == "__main__":
    main()
