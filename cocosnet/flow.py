"""Prefect flow `cocosnet-pipeline`: one task per DVC stage, each running `dvc repro <stage>`.

DVC owns the graph, caching and lineage; Prefect runs the stages in order,
with retries only where a stage is safe to repeat, and keeps run history.

    python -m pipelines.flow                       # ephemeral, no server needed (`make flow`)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipelines.flow

This module is the flow; pipelines/flow.py is its command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

REPO = Path(__file__).resolve().parents[1]


def dvc_stages(dvc_file: Path = REPO / "dvc.yaml") -> tuple[str, ...]:
    """The stage names of dvc.yaml in file order, which is a graph order (a test checks it)."""
    return tuple(yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"])


STAGES = dvc_stages()
# Data stages are idempotent and cheap to redo; training stages resume from their
# checkpoints, so a retry would not lose work, but a failing multi-hour run should
# stop and be looked at rather than silently run again.
TRAINING = ("pretrain", "train", "refine")
RETRIES = {stage: 0 if stage in TRAINING else 2 for stage in STAGES}


def run_dvc_stage(stage: str, params_file: Path, repo: Path) -> str:
    """`dvc repro --single-item <stage>`; raises with DVC's output if it fails."""
    cmd = ["dvc", "repro", "--single-item", stage]
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if params_file.resolve() != (repo / "params.yaml").resolve():
        raise ValueError(f"{params_file}: DVC stages read params.yaml; apply other settings with "
                         "`python -m stages.use_profile` or `dvc exp run -S`")
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"dvc repro {stage} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


def _stage_task(stage: str):
    @task(name=stage, retries=RETRIES[stage], retry_delay_seconds=[2, 5, 15][:RETRIES[stage]] or 0)
    def run(params_file: Path, repo: Path) -> str:
        out = run_dvc_stage(stage, params_file, repo)
        get_run_logger().info("%s: %s", stage, out.strip().splitlines()[-1] if out.strip() else "done")
        return out

    return run


TASKS = {stage: _stage_task(stage) for stage in STAGES}


@flow(name="cocosnet-pipeline", flow_run_name="cocosnet {experiment}")
def cocosnet_pipeline(params_file: Path = Path("params.yaml"), targets: list[str] | None = None,
                      experiment: str = "default", repo: Path = Path(".")) -> list[str]:
    """Run the DVC stages in graph order (all of them, or up to and including `targets`)."""
    wanted = list(STAGES)
    if targets:
        unknown = sorted(set(targets) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        wanted = list(STAGES[:max(STAGES.index(t) for t in targets) + 1])
    os.environ.setdefault("COCOSNET_PIPELINE_RUN", f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    done = []
    for stage in wanted:
        TASKS[stage](params_file, repo)
        done.append(stage)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the CoCosNet pipeline with Prefect")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--targets", nargs="*", default=None, help="stop after these stages")
    parser.add_argument("--experiment", default="default")
    args = parser.parse_args()
    done = cocosnet_pipeline(params_file=args.params, targets=args.targets, experiment=args.experiment)
    print(f"cocosnet-pipeline: ran {', '.join(done)}")
