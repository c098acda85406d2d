"""Stage `synthesize`: write the synthetic dataset to --out, in DeepFashion-HD's layout (`data.source:
synthetic`) or, with `data.source: inshop` and `data.root` at --out, in the In-shop benchmark's layout."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from cocosnet.config import ConfigError
from cocosnet.data.synthetic import SyntheticSpec, generate
from cocosnet.io import atomic_write
from stages.common import run_stage


def main(cfg, args) -> None:
    out = Path(args.out)
    if cfg.data.source == "synthetic" and Path(cfg.data.root) != out:
        raise ConfigError(f"data.root is {cfg.data.root!r}, but synthetic data is written to {str(out)!r}; "
                          "set data.root to it")
    synthetic_inshop = cfg.data.source == "inshop" and Path(cfg.data.root) == out
    if cfg.data.source != "synthetic" and not synthetic_inshop:
        # The stage stays in the graph; with real data it leaves only a note.
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "NOT_GENERATED.txt", f"data.source is {cfg.data.source}; nothing synthesized.\n")
        return
    spec = SyntheticSpec(**asdict(cfg.synthetic))
    layout = "inshop" if synthetic_inshop else "deepfashion"
    summary = generate(spec, out, workers=cfg.data.workers or os.cpu_count() or 1, layout=layout)
    print(f"synthesize: {summary['images']} images of {summary['identities']} identities ({layout} layout) -> {out}")


def add_args(parser) -> None:
    parser.add_argument("--out", default="data/raw/synthetic", help="output directory (a DVC out)")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
