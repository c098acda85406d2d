"""Stage `evaluate`: val outputs as JPG, reports/metrics.json, plots, reports/eval/report.html, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from cocosnet.evaluation_run import run_evaluation
from stages.common import run_stage


def main(cfg, args) -> None:
    print(json.dumps(run_evaluation(cfg, Path(args.model), Path(args.reports), Path(args.outputs)), indent=1))


def add_args(parser) -> None:
    parser.add_argument("--model", default="models/refine.pt")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--outputs", default="reports/eval/outputs",
                        help="where the JPG outputs go: <outputs>/{self,ref}/{fake,real,exemplar}/NNNNN.jpg")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
