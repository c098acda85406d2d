"""`make study` and `make study-gan`: the correspondence and generation studies. Each run of the
study's runs file (study/runs.yaml, study/gan_runs.yaml) is a DVC experiment of study/dvc.yaml
(`dvc exp run study/dvc.yaml:<target> -S study/params.yaml:<key>=<value>`), tracked in MLflow
(experiment `cocosnet-study`, one parent run per study run). A finished run's result is filed under
reports/study/runs/ (gan_runs/) as <name>.json and skipped by the next call; a killed run resumes
from its checkpoints. At the end (and after every run) it writes reports/study/correspondence.json
and .png, or generation.json and the `full` run's sample grid.

    python -m stages.study [--gan [--keep-pretrain]] [--only full,no_gru] [--report-only] [--dry-run]

`--keep-pretrain` runs the generation study on study/models/pretrain.pt as it is, stale or not
(`dvc exp run study/dvc.yaml:train --downstream`: train, refine, evaluate), so that its runs share
one correspondence model; each run's file records that model's md5.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cocosnet.config import ConfigError, read_yaml
from cocosnet.io import atomic_write, atomic_write_json
from cocosnet.report import correspondence_plot
from cocosnet.study import StudyRun, gan_run_result, gan_summary, is_finished, read_runs, result_path, run_result, summary

PARAMS = Path("study/params.yaml")
PIPELINE = Path("study/dvc.yaml")
PRETRAIN = Path("study/models/pretrain.pt")  # the correspondence model every GAN run starts from
REPORTS = Path("reports/study")


@dataclass(frozen=True)
class Study:
    name: str
    runs: Path  # the runs file
    target: str  # the study/dvc.yaml stage each run reproduces
    results: Path  # one JSON per finished run

    def result(self, run: StudyRun, minutes: float) -> dict:
        if self.name == "correspondence":
            return run_result(run, read_yaml(Path("study/score.json")), minutes)  # JSON is YAML
        params = read_yaml(PARAMS)
        return gan_run_result(run, read_yaml(Path("study/reports/metrics.json")), minutes=minutes,
                              steps=_overridden(run, params, "train.steps"),
                              crop_size=_overridden(run, params, "data.crop_size"))

    def write_summary(self, runs: list[StudyRun]) -> dict:
        profile = read_yaml(PARAMS).get("profile", "study")
        if self.name == "correspondence":
            out = summary(runs, self.results, profile=profile)
            atomic_write_json(REPORTS / "correspondence.json", out)
            named = {name: r["per_level"] for name, r in out["runs"].items()}
            if named:
                correspondence_plot({"per_level": named}, REPORTS / "correspondence.png",
                                    title=f"correspondence study ({out['crop_size']} px crops, val self pairs)")
            return out
        out = gan_summary(runs, self.results, profile=profile)
        atomic_write_json(REPORTS / "generation.json", out)
        return out


CORRESPONDENCE = Study("correspondence", Path("study/runs.yaml"), "score", REPORTS / "runs")
GENERATION = Study("generation", Path("study/gan_runs.yaml"), "evaluate", REPORTS / "gan_runs")
GAN_GRID = Path("study/reports/eval/samples.png")  # the evaluate stage's grid of the run just finished


def _overridden(run: StudyRun, params: dict, key: str):
    if key in run.overrides:
        return run.overrides[key]
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def run_one(study: Study, run: StudyRun, dvc: str, keep_pretrain: bool = False) -> float:
    """One `dvc exp run` of the study's target in the workspace (with `keep_pretrain`, the GAN
    stage and what follows it only); study/params.yaml is restored afterwards. Returns minutes."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = "study" if study is CORRESPONDENCE else "study-gan"
    target = [f"{PIPELINE}:train", "--downstream"] if keep_pretrain else [f"{PIPELINE}:{study.target}"]
    cmd = [dvc, "exp", "run", *target, "--name", f"{prefix}-{run.name}-{stamp}", *run.cli(str(PARAMS))]
    print("study: " + " ".join(cmd), flush=True)
    original = PARAMS.read_text(encoding="utf-8")
    # The stages run `python`: the interpreter of this venv, as under `make`.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "COCOSNET_PIPELINE_RUN": f"{prefix}-{run.name}-{stamp}"}
    start = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env=env)
    finally:
        if PARAMS.read_text(encoding="utf-8") != original:
            atomic_write(PARAMS, original)
    return (time.perf_counter() - start) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan", action="store_true", help="the generation study (study/gan_runs.yaml)")
    parser.add_argument("--only", default="", help="comma-separated run names (default: every run)")
    parser.add_argument("--keep-pretrain", action="store_true",
                        help="with --gan: train from study/models/pretrain.pt as it is, even if its stage is stale")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the summary")
    parser.add_argument("--dry-run", action="store_true", help="list what would run")
    beside = Path(sys.executable).with_name("dvc")  # the venv's dvc, whatever PATH says
    parser.add_argument("--dvc", default=str(beside) if beside.exists() else "dvc")
    args = parser.parse_args()
    study = GENERATION if args.gan else CORRESPONDENCE
    if args.keep_pretrain and not args.gan:
        sys.exit("error: --keep-pretrain is for the generation study (--gan); the correspondence study trains pretrain")
    try:
        runs = read_runs(study.runs)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    names = {r.name for r in runs}
    chosen = [n for n in args.only.split(",") if n]
    unknown = sorted(set(chosen) - names)
    if unknown:
        sys.exit(f"error: --only names unknown runs {unknown}; {study.runs} has {sorted(names)}")
    todo = [r for r in runs if (not chosen or r.name in chosen) and not is_finished(study.results, r)]
    for r in runs:
        state = "to run" if r in todo else ("kept" if is_finished(study.results, r) else "not chosen")
        print(f"study: {r.name:20s} {state}  {r.overrides}")
    if args.dry_run or args.report_only:
        if args.report_only:
            study.write_summary(runs)
        return
    for r in todo:
        if is_finished(study.results, r):  # filed meanwhile, e.g. by a study running in another checkout
            print(f"study: {r.name} was finished meanwhile; kept", flush=True)
            continue
        try:
            minutes = run_one(study, r, args.dvc, keep_pretrain=args.keep_pretrain)
        except FileNotFoundError:
            sys.exit(f"error: {args.dvc} not found; install the project (make venv) or pass --dvc")
        except subprocess.CalledProcessError as exc:
            out = study.write_summary(runs)
            sys.exit(f"error: study run {r.name!r} failed ({args.dvc} exited with {exc.returncode}); the finished "
                     f"runs are kept in {study.results}; rerun the study to resume (still to run: "
                     f"{out['missing']})")
        if study is GENERATION and r.name == "full":
            atomic_write(REPORTS / "generation_samples.png", GAN_GRID.read_bytes())
        result = study.result(r, minutes)
        if study is GENERATION and PRETRAIN.is_file():
            result["pretrain_md5"] = hashlib.md5(PRETRAIN.read_bytes()).hexdigest()
        atomic_write_json(result_path(study.results, r), result)
        out = study.write_summary(runs)
        print(f"study: {r.name} done in {minutes:.1f} min; still to run: {out['missing']}", flush=True)
    study.write_summary(runs)


if __name__ == "__main__":
    main()
