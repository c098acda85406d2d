"""Stage `score` of the correspondence study (study/dvc.yaml): per-level top-1 accuracy of the
pretrained matcher, of the same matcher untrained, of the identity mapping and, when the model has
a GRU, of the trained weights with the GRU update off (search only), on the val self pairs.

Writes one JSON (`--out`) that `python -m stages.study` files under the run's name, and logs it to MLflow.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from cocosnet.evaluate import eval_pairs
from cocosnet.io import atomic_write_json
from cocosnet.metrics.schema import flat_metrics
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.study_scores import score_matchers, without_gru
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import load_model
from stages.common import run_stage


def main(cfg, args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained, state = load_model(Path(args.model), cfg)
    torch.manual_seed(cfg.pretrain.seed)  # the untrained matcher is the one pretraining started from
    untrained = CoCosNet.from_config(cfg)
    matchers = {"trained": trained.matcher, "untrained": untrained.matcher}
    if any(cfg.model.correspondence.gru):
        matchers["trained_gru_off"] = without_gru(cfg, trained).matcher
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    table = eval_pairs(pairs, cfg.eval.max_pairs, "self")
    with Tracker(cfg, "study_score", device=str(device)) as tracker:
        per_level = score_matchers(cfg, matchers, table, device=device, bounds=True)
        result = {"pairs": len(table), "steps": int(state.get("step") or 0), "crop_size": cfg.data.crop_size,
                  "per_level": per_level, "config": {k: v for k, v in asdict(cfg).items()
                                                     if k in ("model", "pretrain", "loss_weights")}}
        atomic_write_json(Path(args.out), result)
        tracker.log_metrics(flat_metrics({"correspondence": {"per_level": per_level}}), step=0)
        tracker.log_artifact(Path(args.out))
    finest = str(len(cfg.model.align.widths) - 1)
    print("study score, finest level: " + ", ".join(
        f"{who} {levels[finest]['epe_px']:.2f} px" for who, levels in per_level.items()))


def add_args(parser) -> None:
    parser.add_argument("--model", default="study/models/pretrain.pt")
    parser.add_argument("--out", default="study/score.json")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
