"""Stage `evaluate`: val metrics -> reports/metrics.json, sample grid, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from cocosnet.evaluate import evaluate
from cocosnet.io import atomic_write_json
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import code_version
from cocosnet.train.loop import load_model
from stages.common import run_stage


def main(cfg, args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained, _ = load_model(Path(args.model), cfg)
    torch.manual_seed(cfg.eval.seed)
    untrained = CoCosNet.from_config(cfg)
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    reports = Path(args.reports)
    with Tracker(cfg, "evaluate", device=str(device), git_sha=code_version()) as tracker:
        metrics = evaluate(cfg, trained, untrained, pairs, device=device, grid_path=reports / "eval" / "samples.png")
        metrics["vgg_weights"] = cfg.vgg.weights
        atomic_write_json(reports / "metrics.json", metrics)
        flat = {f"{group}.{name}.{who}": value for group in ("paired",) for name, d in metrics[group].items()
                for who, value in d.items()}
        if "correspondence" in metrics:
            flat.update({f"correspondence.{m}.{who}": v for m in ("epe_px", "acc_3px")
                         for who, v in metrics["correspondence"][m].items()})
        tracker.log_metrics(flat, step=0)
        tracker.log_artifact(reports / "metrics.json")
        tracker.log_artifact(reports / "eval" / "samples.png", "samples")
    print(json.dumps({k: metrics[k] for k in metrics if k != "correspondence"} |
                     {"correspondence": {k: v for k, v in metrics.get("correspondence", {}).items() if k != "per_level"}},
                     indent=1))


def add_args(parser) -> None:
    parser.add_argument("--model", default="models/train.pt")
    parser.add_argument("--reports", default="reports")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
