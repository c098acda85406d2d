"""Quick recipe experiments: pretrain the matcher alone with `-S key=value` overrides, then score its
correspondence per level on the val self pairs against the identity mapping.

    python -m stages.study_recipe --name lr1e-3 -S pretrain.lr=1.0e-3 [--steps 150] [--pairs 60]

Writes reports/study/recipe/<name>.json. Needs the data stages of the params file (`dvc repro build_pairs`).
This is the measuring tool of docs/studies/correspondence.md, not a pipeline stage.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from cocosnet.config import config_from_dict, read_yaml
from cocosnet.evaluate import eval_pairs
from cocosnet.io import atomic_write_json
from cocosnet.study_scores import score_matchers, without_gru
from cocosnet.train.distributed import DistInfo
from cocosnet.train.inputs import PRETRAIN
from cocosnet.train.loop import batches, build


def with_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` (value read as YAML) to a nested params dict."""
    for item in overrides:
        key, _, value = item.partition("=")
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if last not in node:
            raise KeyError(f"unknown key {key}")
        node[last] = yaml.safe_load(value)
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--out", default="reports/study/recipe")
    args = ap.parse_args()
    steps = [f"pretrain.steps={args.steps}"] if args.steps else []  # --steps 0: score the untrained matcher
    raw = with_overrides(read_yaml(args.params), [*steps, *args.overrides])
    cfg = config_from_dict(raw)
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    device = torch.device("cpu")
    trainer = build(cfg, PRETRAIN, device, distributed=False)
    loader = batches(cfg, PRETRAIN, pairs, DistInfo(0, 1, device), 0)
    start = time.perf_counter()
    trainer.model.train()
    history = []
    for step, batch in zip(range(1, args.steps + 1), loader):
        metrics = trainer.step(batch, step)
        if step % 25 == 0 or step == args.steps:
            history.append({"step": step, **metrics})
            print(args.name, history[-1], flush=True)
    minutes = (time.perf_counter() - start) / 60
    matchers = {"trained": trainer.model.matcher}
    if any(cfg.model.correspondence.gru):
        matchers["trained_gru_off"] = without_gru(cfg, trainer.model).matcher
    result = score_matchers(cfg, matchers, eval_pairs(pairs, args.pairs, "self"), device=device, bounds=True)
    report = {"name": args.name, "overrides": args.overrides, "steps": args.steps, "pairs": args.pairs,
              "train_minutes": round(minutes, 2), "per_level": result, "history": history}
    atomic_write_json(Path(args.out) / f"{args.name}.json", report)
    for name in matchers:
        for lv in result[name]:
            t, i = result[name][lv], result["identity"][lv]
            print(f"{args.name} {name} L{lv}: epe {t['epe_px']:.2f} vs {i['epe_px']:.2f}  acc1 {t['acc_1px']:.3f} "
                  f"vs {i['acc_1px']:.3f}")


if __name__ == "__main__":
    main()
