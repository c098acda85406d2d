"""What the `pretrain` and `train` stage CLIs share: distributed setup, tracking, the loop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cocosnet.config import Config
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import code_version
from cocosnet.train.distributed import setup, teardown
from cocosnet.train.loop import run_training


def train_stage(cfg: Config, stage: str, *, pairs: Path, ckpt_dir: Path, out_model: Path, reports: Path,
                init: Path | None = None) -> None:
    info = setup()
    try:
        table = pd.read_parquet(pairs)
        with Tracker(cfg, stage, device=str(info.device), git_sha=code_version(), enabled=info.is_main) as tracker:
            metrics, _ = run_training(cfg, stage, table, ckpt_dir=ckpt_dir, out_model=out_model, reports=reports,
                                   info=info, init=init, log=tracker.log_metrics, artifact=tracker.log_artifact)
            if info.is_main:
                for name in ("losses.tsv", "losses.png"):
                    tracker.log_artifact(reports / name, "plots")
                tracker.log_artifact(out_model, "model")
                print(f"{stage}: done -> {out_model} {metrics}")
    finally:
        teardown()
