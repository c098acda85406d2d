"""Prefect flow `cocosnet-pipeline`: one task per DVC stage, each running `dvc repro --single-item <stage>`.

DVC owns the graph, caching and lineage; Prefect runs the stages in order,
streams each stage's output into the run's logs as it comes, retries only
where a repeat can help, and keeps run history.

    python -m pipelines.flow                              # ephemeral, no server needed (`make flow`)
    python -m pipelines.flow --set train.steps=200 --targets train
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m pipelines.flow
    python -m pipelines.deploy                            # a deployment on a process work pool (docs/scale.md)

`overrides` are `key=value` settings of params.yaml, as `dvc exp run -S` takes them: they are
validated, written into params.yaml for the run (DVC then records them in dvc.lock and MLflow in the
runs' params) and params.yaml is restored afterwards. One run at a time per checkout (the deployment's
work pool has a concurrency limit of 1). `pull`/`push` run `dvc pull`/`dvc push` around the stages,
for a worker whose checkout shares a DVC remote with the team.

This module is the flow; pipelines/flow.py is its command.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections import deque
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from cocosnet.io import atomic_write
from cocosnet.profiles import parse_overrides, write_overrides

REPO = Path(__file__).resolve().parents[1]
BAD_INPUT = 2  # the stages' exit status for bad input or settings (stages/common.py): a retry would fail again
TAIL_LINES = 40


def dvc_stages(dvc_file: Path = REPO / "dvc.yaml") -> tuple[str, ...]:
    """The stage names of dvc.yaml in file order, which is a graph order (a test checks it)."""
    return tuple(yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"])


STAGES = dvc_stages()
# Data stages are idempotent and cheap to redo; training stages resume from their
# checkpoints, so a retry would not lose work, but a failing multi-hour run should
# stop and be looked at rather than silently run again.
TRAINING = ("pretrain", "train", "refine")
RETRIES = {stage: 0 if stage in TRAINING else 2 for stage in STAGES}


class StageFailed(RuntimeError):
    """A command failed; `status` is the stage's own exit status where DVC reports it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def stage_status(returncode: int, output: str) -> int:
    """The failed stage command's exit status: `dvc repro` exits 255 and names it in its error line."""
    found = re.findall(r"exited with (\d+)", output)
    return int(found[-1]) if found else returncode


def run_streamed(cmd: list[str], repo: Path, log=print) -> str:
    """Run `cmd` in `repo`, passing each output line to `log` as it comes; raise StageFailed with the
    output's tail if it fails."""
    env = {**os.environ, "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1"),
           "CI": os.environ.get("CI", "1")}  # CI: no progress bars in the logs
    lines: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                log(line)
    output = "\n".join(lines)
    if proc.returncode:
        status = stage_status(proc.returncode, output)
        raise StageFailed(f"{' '.join(cmd)} failed (exit status {status}):\n{output}", status)
    return output


def run_dvc_stage(stage: str, repo: Path, log=print) -> str:
    """`dvc repro --single-item <stage>`, its output streamed to `log`."""
    return run_streamed(["dvc", "repro", "--single-item", stage], repo, log)


def stage_outcome(output: str) -> str:
    """What `dvc repro --single-item` did, from its output: ran, up to date, or restored from the run cache."""
    if "didn't change, skipping" in output:
        return "up to date"
    if "is cached - skipping run" in output:
        return "restored from the run cache"
    return "ran"


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect's retry condition: never retry a stage that exited with status 2 (bad input)."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.status != BAD_INPUT
    except Exception:  # noqa: BLE001 -- anything else may be transient
        return True
    return True


def _stage_task(stage: str):
    @task(name=stage, retries=RETRIES[stage], retry_delay_seconds=[2, 5, 15][:RETRIES[stage]] or 0,
          retry_condition_fn=retry_unless_bad_input)
    def run(repo: Path) -> str:
        logger = get_run_logger()
        return stage_outcome(run_dvc_stage(stage, repo, lambda line: logger.info("%s | %s", stage, line)))

    return run


TASKS = {stage: _stage_task(stage) for stage in STAGES}


@task(name="dvc", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_bad_input)
def dvc_transfer(command: str, repo: Path) -> str:
    """`dvc pull` or `dvc push` (the checkout's default remote)."""
    logger = get_run_logger()
    return run_streamed(["dvc", command], repo, lambda line: logger.info("dvc %s | %s", command, line))


@flow(name="cocosnet-pipeline", flow_run_name="cocosnet {experiment}")
def cocosnet_pipeline(overrides: list[str] | None = None, targets: list[str] | None = None,
                      experiment: str = "default", repo: str | None = None, pull: bool = False,
                      push: bool = False) -> dict[str, str]:
    """Run the DVC stages in graph order (all of them, or up to and including `targets`), with the
    `key=value` overrides written into params.yaml for the run. Returns each stage's outcome."""
    root = Path(repo) if repo else REPO
    wanted = list(STAGES)
    if targets:
        unknown = sorted(set(targets) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        wanted = list(STAGES[:max(STAGES.index(t) for t in targets) + 1])
    os.environ.setdefault("COCOSNET_PIPELINE_RUN", f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    params = root / "params.yaml"
    original = params.read_text(encoding="utf-8")
    if overrides:
        write_overrides(params, parse_overrides(list(overrides)))  # ConfigError names the key: no stage runs
        get_run_logger().info("params.yaml for this run: %s", ", ".join(overrides))
    done: dict[str, str] = {}
    try:
        if pull:
            dvc_transfer("pull", root)
        for stage in wanted:
            done[stage] = TASKS[stage](root)
        if push:
            dvc_transfer("push", root)
    finally:
        if params.read_text(encoding="utf-8") != original:
            atomic_write(params, original)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the CoCosNet pipeline with Prefect")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml setting for this run (repeatable), as `dvc exp run -S`")
    parser.add_argument("--targets", nargs="*", default=None, help="stop after these stages")
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--pull", action="store_true", help="dvc pull before the stages")
    parser.add_argument("--push", action="store_true", help="dvc push after them")
    args = parser.parse_args()
    done = cocosnet_pipeline(overrides=args.overrides, targets=args.targets, experiment=args.experiment,
                             pull=args.pull, push=args.push)
    for outcome in ("ran", "restored from the run cache", "up to date"):
        stages = [stage for stage, did in done.items() if did == outcome]
        if stages:
            print(f"cocosnet-pipeline: {outcome}: {', '.join(stages)}")


def deploy(name: str = "demo", pool: str = "cocosnet", *, source: str | None = None,
           overrides: list[str] | None = None, targets: list[str] | None = None, pull: bool = False,
           push: bool = False) -> str:
    """The deployment `cocosnet-pipeline/<name>` on the process work pool `pool` (created, with a
    concurrency limit of 1, if missing), running this checkout (or `source`: a git URL or another
    path; the worker checks it out). Its default parameters are the given ones; a run can pass its own
    (`prefect deployment run cocosnet-pipeline/<name> --param overrides='["train.steps=200"]'`).
    Returns the deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", concurrency_limit=1))
    flow_from_source = cocosnet_pipeline.from_source(source=source or str(REPO),
                                                     entrypoint="cocosnet/flow.py:cocosnet_pipeline")
    parameters = {"overrides": list(overrides or []), "targets": targets, "pull": pull, "push": push,
                  "experiment": name}
    return str(flow_from_source.deploy(name=name, work_pool_name=pool, parameters=parameters,
                                       print_next_steps=False))


def deploy_main() -> None:
    parser = argparse.ArgumentParser(description="Deploy the CoCosNet pipeline flow on a Prefect process work pool")
    parser.add_argument("--name", default="demo")
    parser.add_argument("--pool", default="cocosnet")
    parser.add_argument("--source", default=None, help="a git URL or path the worker runs (default: this checkout)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a default params.yaml setting of the deployment's runs (repeatable)")
    parser.add_argument("--targets", nargs="*", default=None)
    parser.add_argument("--pull", action="store_true")
    parser.add_argument("--push", action="store_true")
    args = parser.parse_args()
    deployment = deploy(args.name, args.pool, source=args.source, overrides=args.overrides, targets=args.targets,
                        pull=args.pull, push=args.push)
    print(f"deployment cocosnet-pipeline/{args.name} ({deployment}) on work pool {args.pool}; start a worker with "
          f"`prefect worker start --pool {args.pool}` and run it with `prefect deployment run cocosnet-pipeline/{args.name}`")
