"""What the `pretrain` and `train` stage CLIs share: distributed setup, tracking, the loop."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from cocosnet.config import Config
from cocosnet.io import sha256_file
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import load_checkpoint
from cocosnet.train.distributed import setup, teardown
from cocosnet.train.inputs import StageSpec
from cocosnet.train.launch import run_torchrun, wants_torchrun
from cocosnet.train.loop import RunPaths, run_training

ACROSS_CODE_ENV = "COCOSNET_RESUME_ACROSS_CODE_CHANGE"


def add_resume_flag(parser) -> None:
    parser.add_argument("--resume-across-code-change", action="store_true",
                        help=f"resume a checkpoint trained by other code (same params, data and files); recorded in "
                             f"the checkpoint and in MLflow. Under `dvc repro`: {ACROSS_CODE_ENV}=1")


def train_stage(cfg: Config, spec: StageSpec, paths: RunPaths, *, across_code_change: bool = False) -> None:
    if wants_torchrun(cfg.launch):  # launch.nproc_per_node x nnodes > 1: this process starts torchrun
        sys.exit(run_torchrun(cfg.launch, f"stages.{spec.name}", sys.argv[1:]))
    across_code_change = across_code_change or os.environ.get(ACROSS_CODE_ENV, "") not in ("", "0")
    info = setup()
    try:
        table = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
        with Tracker(cfg, spec.name, device=str(info.device), enabled=info.is_main) as tracker:
            metrics, _ = run_training(cfg, spec, table, paths, info=info, log=tracker.log_metrics,
                                      artifact=tracker.log_artifact, tag=tracker.set_tags,
                                      across_code_change=across_code_change)
            if info.is_main:
                for name in ("losses.tsv", "losses.png"):
                    tracker.log_artifact(paths.reports / name, "plots")
                tracker.log_artifact(paths.out_model, "model")
                tracker.tag_model(sha256_file(paths.out_model), load_checkpoint(paths.out_model).get("inputs"))
                print(f"{spec.name}: done -> {paths.out_model} {metrics}")
    finally:
        teardown()
