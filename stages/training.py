"""What the `pretrain` and `train` stage CLIs share: distributed setup, tracking, the loop."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cocosnet.config import Config
from cocosnet.models import cpu_allocator
from cocosnet.tracking import Tracker
from cocosnet.train.distributed import setup, teardown
from cocosnet.train.inputs import StageSpec
from cocosnet.train.loop import RunPaths, run_training


def train_stage(cfg: Config, spec: StageSpec, paths: RunPaths) -> None:
    info = setup()
    cpu_allocator.install(info.device)
    try:
        table = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
        with Tracker(cfg, spec.name, device=str(info.device), enabled=info.is_main) as tracker:
            metrics, _ = run_training(cfg, spec, table, paths, info=info, log=tracker.log_metrics,
                                      artifact=tracker.log_artifact)
            if info.is_main:
                for name in ("losses.tsv", "losses.png"):
                    tracker.log_artifact(paths.reports / name, "plots")
                tracker.log_artifact(paths.out_model, "model")
                print(f"{spec.name}: done -> {paths.out_model} {metrics}")
    finally:
        teardown()
