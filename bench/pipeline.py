"""The demo from a fresh clone: `make venv` and `make pipeline` in a new folder, timed per stage.
Appends a record to reports/bench/pipeline.json.

    python -m bench.pipeline [--ref HEAD] [--dir ../cocosnet-bench-XXXX] [--keep]

The clone goes beside this checkout (so `../shared` is there as in CI) with its own
TORCH_EXTENSIONS_DIR, so the CPU kernels are compiled as on a new machine (inside `make venv`).
Stage times are the gaps between DVC's "Running stage" lines; the goal is
`make pipeline` in <= 600 s, install excluded. The record also checks what the demo must show
(the trained correspondence beats the identity at every level; the output beats copying the
exemplar on L1) and whether the clone reproduced the committed reports/metrics.json byte for byte.
Run it on a quiet machine: it takes about 12 minutes, and nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import ROOT, machine, write_report
from cocosnet.measure.pipeline import demo_checks, timed_make

GOAL_S = 600.0


def run(ref: str, folder: Path, keep: bool) -> dict:
    commit = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=folder, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    extensions = folder.with_name(folder.name + "-torch-extensions")  # outside the clone, so git status stays clean
    env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    try:
        install_s, _ = timed_make("venv", folder, env)
        pipeline_s, stages = timed_make("pipeline", folder, env)
        metrics_file = folder / "reports" / "metrics.json"
        status = subprocess.run(["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True,
                                check=True).stdout.splitlines()
        committed = subprocess.run(["git", "show", f"{commit}:reports/metrics.json"], cwd=ROOT, capture_output=True,
                                   text=True).stdout
        return {"commit": commit, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "install_s": install_s, "pipeline_s": pipeline_s, "stages_s": stages, "goal_s": GOAL_S,
                "goal_met": pipeline_s <= GOAL_S,
                "metrics_identical_to_commit": metrics_file.read_text() == committed,
                "git_status_clean": not status, "changed_files": status[:20],
                "demo": demo_checks(json.loads(metrics_file.read_text()))}
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(extensions, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument("--dir", type=Path, help="the new folder (default: a fresh one beside this checkout)")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/bench/pipeline.json")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="cocosnet-bench-", dir=ROOT.parent))
    if folder.exists() and any(folder.iterdir()):
        parser.error(f"--dir {folder} is not empty")
    record = run(args.ref, folder, args.keep)
    print(json.dumps(record, indent=1))
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    write_report(args.out, {
        "what": "the demo from a fresh clone: `make venv` (install, including the CPU kernels' build) and `make "
                "pipeline`, wall seconds; stage seconds are the gaps between DVC's 'Running stage' lines",
        "machine": machine(), "records": [*previous.get("records", []), record]})


if __name__ == "__main__":
    main()
