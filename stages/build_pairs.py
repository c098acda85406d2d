"""Stage `build_pairs`: the pair table, data summary and contact sheet."""

from __future__ import annotations

from pathlib import Path

from cocosnet.data.pair_table import pair_table
from stages.common import run_stage


def main(cfg, args) -> None:
    print(pair_table(cfg, Path(args.reports)))


def add_args(parser) -> None:
    parser.add_argument("--reports", default="reports/data", help="where summary.json and the contact sheet go")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
