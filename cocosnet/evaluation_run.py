"""The evaluate stage's work: outputs, metrics, plots, the HTML report and the MLflow run of one model file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from cocosnet.config import Config
from cocosnet.evaluate import evaluate
from cocosnet.io import atomic_save, atomic_write_json, sha256_file
from cocosnet.metrics.schema import flat_metrics, losses_to_baselines
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.report import correspondence_plot, loss_plot, read_losses, write_report
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import load_model

GRID_CAPTION = ("columns: exemplar | pose | warp at each level (coarse to fine) | output | target | error of the "
                "finest warp | error of the output (|image - target|, mean over RGB; white: a quarter of the range or more)")


def run_evaluation(cfg: Config, model_path: Path, reports: Path, outputs: Path) -> dict:
    """Evaluate the model file on the val pairs: JPG outputs under `outputs`, <reports>/metrics.json, the plots
    and <reports>/eval/report.html, and an MLflow run. Returns the headline numbers."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained, ckpt = load_model(model_path, cfg)
    torch.manual_seed(cfg.eval.seed)
    untrained = CoCosNet.from_config(cfg)
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    eval_dir = reports / "eval"
    with Tracker(cfg, "evaluate", device=str(device)) as tracker:
        fingerprint = sha256_file(model_path)
        tracker.tag_model(fingerprint, ckpt.get("inputs"), link=True)
        metrics, grids = evaluate(cfg, trained, untrained, pairs, device=device, outputs=outputs,
                                  fingerprint=fingerprint)
        metrics["vgg_weights"] = cfg.vgg.weights
        figures: dict = {}
        if "correspondence" in metrics:
            figures["Correspondence accuracy by level"] = correspondence_plot(
                metrics["correspondence"], eval_dir / "correspondence.png")
        losses = loss_plot({stage: read_losses(reports / stage / "losses.tsv")
                            for stage in ("pretrain", "train", "refine")},
                           eval_dir / "losses.png")
        if losses is not None:
            figures["Loss curves"] = losses
        grid_files = {}
        for kind, grid in grids.items():
            path = eval_dir / ("samples.png" if kind == "self" else f"samples_{kind}.png")
            atomic_save(path, lambda f, grid=grid: grid.save(f, format="PNG"))
            grid_files[f"Samples, val {kind} pairs ({GRID_CAPTION})"] = path
        notes = []
        if cfg.vgg.weights == "random":
            notes.append("The perceptual, feature-matching and contextual losses used a randomly initialised VGG19 "
                         "(vgg.weights: random), so this model is not comparable with one trained with real weights.")
        if "unavailable" in metrics["fid"]:
            notes.append(f"FID unavailable: {metrics['fid']['unavailable']}")
        write_report(eval_dir / "report.html", metrics, figures=figures, grids=grid_files, notes=notes,
                     info={"profile": cfg.profile, "model": f"{model_path} (step {ckpt.get('step')})",
                           "device": str(device), "self pairs": metrics["pairs"],
                           "ref pairs": metrics["ref_pairs"], "protocol": cfg.eval.protocol,
                           **({"JPEG quality": cfg.eval.jpeg_quality} if cfg.eval.protocol == "cocosnet" else {})})
        atomic_write_json(reports / "metrics.json", metrics)
        tracker.log_metrics(flat_metrics(metrics), step=0)
        lost = losses_to_baselines(metrics)
        tracker.set_tags({"fid": "unavailable" if "unavailable" in metrics["fid"] else "computed",
                          "eval_protocol": cfg.eval.protocol,
                          "beats_baselines": str(not lost).lower(), "loses_to": "; ".join(lost) or "none"})
        # Registered only when it beats its baselines (losses_to_baselines, docs/scale.md). Imported here:
        # MLflow's pyfunc machinery is slow to import and only this call needs it.
        from cocosnet.serving import log_pyfunc

        tracker.log_model(model_path, log_pyfunc, registered_name=None if lost else f"cocosnet-{cfg.profile}")
        tracker.log_artifact(reports / "metrics.json")
        for path in [eval_dir / "report.html", *figures.values(), *grid_files.values()]:
            tracker.log_artifact(path, "eval")
    summary = {k: metrics[k] for k in ("pairs", "ref_pairs", "paired") if k in metrics}
    summary["swd"] = {k: v for k, v in metrics["swd"].items() if k != "per_level"}
    summary["fid"] = metrics["fid"]
    summary["correspondence"] = {k: v for k, v in metrics.get("correspondence", {}).items() if k != "per_level"}
    return summary
