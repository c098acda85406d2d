"""How much could any refinement of the trained matches still gain? Scores saved matchers on the val self
pairs with `refinement_bounds` per level: the EPE left if every top-1 match within 3 px became exact
(the floor of a local refinement such as the GRU's deltas) and the EPE of the best of the k candidates
(the floor of a perfect re-ranking). Writes one JSON.

    python -m stages.study_gru_bounds --params study/params.yaml --pairs 120 \\
        --model full=study/models/full.pt --model no_gru=study/models/no_gru.pt --out reports/study/gru_bounds.json

A model whose GRU is on is also scored with the GRU off (`<name>_gru_off`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from cocosnet.config import config_from_dict, load_config, saved_config
from cocosnet.evaluate import eval_pairs
from cocosnet.io import atomic_write_json
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.study_scores import score_matchers, without_gru
from cocosnet.train.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="for the data and the val pairs")
    parser.add_argument("--model", action="append", required=True, help="name=path of a model file")
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = load_config(Path(args.params))
    table = eval_pairs(pd.read_parquet(Path(base.data.processed) / "pairs.parquet"), args.pairs, "self")
    result = {"params": args.params, "pairs": args.pairs, "models": {}, "per_level": {}}
    for item in args.model:
        name, _, path = item.partition("=")
        state = load_checkpoint(Path(path))
        cfg = config_from_dict(saved_config(state["config"]))  # each model with the settings it was trained with
        model = CoCosNet.from_config(cfg)
        model.load_state_dict(state["model"])
        matchers = {name: model.matcher}
        if any(cfg.model.correspondence.gru):
            matchers[f"{name}_gru_off"] = without_gru(cfg, model).matcher
        scores = score_matchers(cfg, matchers, table, device=torch.device("cpu"), bounds=True)
        result["models"][name] = path
        result["per_level"].update(scores)
        for who in matchers:
            top = scores[who][max(scores[who], key=int)]
            print(f"{who}: finest epe {top['epe_px']:.2f}, beyond 3 px {top['epe_beyond_3px']:.2f}, "
                  f"best of k {top['best_of_k_epe_px']:.2f}", flush=True)
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
