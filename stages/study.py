"""`make study`: the correspondence study. Each run of study/runs.yaml is a DVC experiment of
study/dvc.yaml (`dvc exp run -S study/params.yaml:<key>=<value>`), tracked in MLflow
(experiment `cocosnet-study`, one parent run per study run). A finished run's score is filed as
reports/study/runs/<name>.json and skipped by the next `make study`; a killed run resumes from its
checkpoints. At the end (and after every run) it writes reports/study/correspondence.json and .png.

    python -m stages.study [--only full,no_gru] [--report-only] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from cocosnet.config import ConfigError, read_yaml
from cocosnet.io import atomic_write, atomic_write_json
from cocosnet.report import correspondence_plot
from cocosnet.study import StudyRun, is_finished, read_runs, result_path, run_result, summary

PARAMS = Path("study/params.yaml")
PIPELINE = Path("study/dvc.yaml")
RUNS = Path("study/runs.yaml")
SCORE = Path("study/score.json")
REPORTS = Path("reports/study")


def run_one(run: StudyRun, dvc: str) -> float:
    """One `dvc exp run` in the workspace; study/params.yaml is restored afterwards. Returns minutes."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    cmd = [dvc, "exp", "run", str(PIPELINE), "--name", f"study-{run.name}-{stamp}", *run.cli(str(PARAMS))]
    print("study: " + " ".join(cmd), flush=True)
    original = PARAMS.read_text(encoding="utf-8")
    # The stages run `python`: the interpreter of this venv, as under `make`.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "COCOSNET_PIPELINE_RUN": f"study-{run.name}-{stamp}"}
    start = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env=env)
    finally:
        if PARAMS.read_text(encoding="utf-8") != original:
            atomic_write(PARAMS, original)
    return (time.perf_counter() - start) / 60


def write_summary(runs: list[StudyRun]) -> dict:
    profile = read_yaml(PARAMS).get("profile", "study")
    out = summary(runs, REPORTS / "runs", profile=profile)
    atomic_write_json(REPORTS / "correspondence.json", out)
    named = {name: r["per_level"] for name, r in out["runs"].items()}
    if named:
        correspondence_plot({"per_level": named}, REPORTS / "correspondence.png",
                            title=f"correspondence study ({out['crop_size']} px crops, val self pairs)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated run names (default: every run)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild correspondence.json/.png")
    parser.add_argument("--dry-run", action="store_true", help="list what would run")
    beside = Path(sys.executable).with_name("dvc")  # the venv's dvc, whatever PATH says
    parser.add_argument("--dvc", default=str(beside) if beside.exists() else "dvc")
    args = parser.parse_args()
    try:
        runs = read_runs(RUNS)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    names = {r.name for r in runs}
    chosen = [n for n in args.only.split(",") if n]
    unknown = sorted(set(chosen) - names)
    if unknown:
        sys.exit(f"error: --only names unknown runs {unknown}; {RUNS} has {sorted(names)}")
    todo = [r for r in runs if (not chosen or r.name in chosen) and not is_finished(REPORTS / "runs", r)]
    for r in runs:
        state = "to run" if r in todo else ("kept" if is_finished(REPORTS / "runs", r) else "not chosen")
        print(f"study: {r.name:20s} {state}  {r.overrides}")
    if args.dry_run or args.report_only:
        if args.report_only:
            write_summary(runs)
        return
    for r in todo:
        if is_finished(REPORTS / "runs", r):  # filed meanwhile, e.g. by a study running in another checkout
            print(f"study: {r.name} was finished meanwhile; kept", flush=True)
            continue
        try:
            minutes = run_one(r, args.dvc)
        except FileNotFoundError:
            sys.exit(f"error: {args.dvc} not found; install the project (make venv) or pass --dvc")
        except subprocess.CalledProcessError as exc:
            out = write_summary(runs)
            sys.exit(f"error: study run {r.name!r} failed ({args.dvc} exited with {exc.returncode}); the finished "
                     f"runs are kept in {REPORTS / 'runs'}; rerun make study to resume (still to run: "
                     f"{out['missing']})")
        score = read_yaml(SCORE)  # JSON is YAML
        atomic_write_json(result_path(REPORTS / "runs", r), run_result(r, score, minutes))
        out = write_summary(runs)
        print(f"study: {r.name} done in {minutes:.1f} min; still to run: {out['missing']}", flush=True)
    write_summary(runs)


if __name__ == "__main__":
    main()
