"""Stage `evaluate`: val outputs as JPG, reports/metrics.json, plots, reports/eval/report.html, MLflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from cocosnet.evaluate import evaluate
from cocosnet.io import atomic_write_json
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.report import correspondence_plot, loss_plot, read_losses, write_report
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import code_version
from cocosnet.train.loop import load_model
from stages.common import run_stage

GRID_CAPTION = "columns: exemplar | pose | warp at each level (coarse to fine) | output | target"


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The numeric leaves of metrics.json as MLflow metric names (dots kept, levels as `level<N>`)."""
    flat: dict[str, float] = {}
    for name, d in metrics.get("paired", {}).items():
        flat.update({f"paired.{name}.{who}": v for who, v in d.items() if who in ("model", "copy_exemplar")})
    for group in ("swd", "fid"):
        d = metrics.get(group, {})
        flat.update({f"{group}.{who}": d[who] for who in ("model", "copy_exemplar") if who in d})
    for who, levels in metrics.get("swd", {}).get("per_level", {}).items():
        flat.update({f"swd.{res}px.{who}": v for res, v in levels.items() if res != "avg"})
    corr = metrics.get("correspondence", {})
    for key in ("epe_px", "acc_1px", "acc_3px"):
        flat.update({f"correspondence.{key}.{who}": v for who, v in corr.get(key, {}).items()})
    for who, levels in corr.get("per_level", {}).items():
        for level, d in levels.items():
            flat.update({f"correspondence.level{level}.{key}.{who}": d[key] for key in ("epe_px", "acc_1px", "acc_3px")
                         if d["pixels"]})
    return flat


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(cfg, args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_path = Path(args.model)
    trained, ckpt = load_model(model_path, cfg)
    torch.manual_seed(cfg.eval.seed)
    untrained = CoCosNet.from_config(cfg)
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    reports = Path(args.reports)
    eval_dir = reports / "eval"
    with Tracker(cfg, "evaluate", device=str(device), git_sha=code_version()) as tracker:
        metrics, grids = evaluate(cfg, trained, untrained, pairs, device=device, outputs=Path(args.outputs),
                                  fingerprint=file_sha256(model_path))
        metrics["vgg_weights"] = cfg.vgg.weights
        figures: dict = {}
        if "correspondence" in metrics:
            figures["Correspondence accuracy by level"] = correspondence_plot(
                metrics["correspondence"], eval_dir / "correspondence.png")
        losses = loss_plot({stage: read_losses(reports / stage / "losses.tsv") for stage in ("pretrain", "train")},
                           eval_dir / "losses.png")
        if losses is not None:
            figures["Loss curves"] = losses
        grid_files = {}
        for kind, grid in grids.items():
            path = eval_dir / ("samples.png" if kind == "self" else f"samples_{kind}.png")
            grid.save(path)
            grid_files[f"Samples, val {kind} pairs ({GRID_CAPTION})"] = path
        notes = []
        if cfg.vgg.weights == "random":
            notes.append("The perceptual, feature-matching and contextual losses used a randomly initialised VGG19 "
                         "(vgg.weights: random), so this model is not comparable with one trained with real weights.")
        if "unavailable" in metrics["fid"]:
            notes.append(f"FID unavailable: {metrics['fid']['unavailable']}")
        write_report(eval_dir / "report.html", metrics, figures=figures, grids=grid_files, notes=notes,
                     info={"profile": cfg.profile, "model": f"{model_path} (step {ckpt.get('step')})",
                           "code": code_version(), "device": str(device), "self pairs": metrics["pairs"],
                           "ref pairs": metrics["ref_pairs"], "JPEG quality": cfg.eval.jpeg_quality})
        atomic_write_json(reports / "metrics.json", metrics)
        tracker.log_metrics(flat_metrics(metrics), step=0)
        tracker.set_tags({"fid": "unavailable" if "unavailable" in metrics["fid"] else "computed"})
        tracker.log_artifact(reports / "metrics.json")
        for path in [eval_dir / "report.html", *figures.values(), *grid_files.values()]:
            tracker.log_artifact(path, "eval")
    summary = {k: metrics[k] for k in ("pairs", "ref_pairs", "paired") if k in metrics}
    summary["swd"] = {k: v for k, v in metrics["swd"].items() if k != "per_level"}
    summary["fid"] = metrics["fid"]
    summary["correspondence"] = {k: v for k, v in metrics.get("correspondence", {}).items() if k != "per_level"}
    print(json.dumps(summary, indent=1))


def add_args(parser) -> None:
    parser.add_argument("--model", default="models/train.pt")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--outputs", default="reports/eval/outputs",
                        help="where the JPG outputs go: <outputs>/{self,ref}/{fake,real,exemplar}/NNNNN.jpg")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
