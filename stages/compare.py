"""Compare experiments: evaluate runs from MLflow ranked by a metric -> reports/compare.md."""

from __future__ import annotations

from pathlib import Path

from cocosnet.compare import rank_runs, to_markdown
from cocosnet.io import atomic_write
from cocosnet.metrics.schema import DEFAULT_RANKING
from cocosnet.tracking import experiment_names, search_runs, tracking_uri
from stages.common import run_stage


def main(cfg, args) -> None:
    uri = tracking_uri(cfg, Path("."))
    experiments = args.experiment or None
    runs = search_runs(uri, experiments, "tags.stage = 'evaluate'")
    if runs.empty:
        raise SystemExit(f"no evaluate runs found at {uri} (experiments: {experiments or 'all'}); "
                         "run `make pipeline` first")
    higher = {"higher": True, "lower": False, "auto": None}[args.direction]
    ranked = rank_runs(runs, args.metric, higher=higher)
    names = experiment_names(uri)
    out = Path(args.out)
    atomic_write(out, to_markdown(ranked, args.metric, higher=higher, experiment_names=names))
    print(f"{len(ranked)} runs ranked by {args.metric} -> {out}")


def add_args(parser) -> None:
    parser.add_argument("--metric", default=DEFAULT_RANKING, help="MLflow metric name, e.g. paired.ssim.model")
    parser.add_argument("--direction", choices=("auto", "higher", "lower"), default="auto",
                        help="which way is better (auto: ssim/psnr/acc higher, everything else lower)")
    parser.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable; default all)")
    parser.add_argument("--out", default="reports/compare.md")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
