"""Stage `score` of the correspondence study (study/dvc.yaml): per-level top-1 accuracy of the
pretrained matcher, of the same matcher untrained, of the identity mapping and, when the model has
a GRU, of the trained weights with the GRU update off (search only), on the val self pairs.

Writes one JSON (`--out`) that `python -m stages.study` files under the run's name, and logs it to MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cocosnet.config import Config
from cocosnet.data.dataset import PairDataset
from cocosnet.evaluate import eval_pairs
from cocosnet.io import atomic_write_json
from cocosnet.metrics.correspondence import (
    batch_gt,
    identity_coords,
    level_errors,
    refinement_bounds,
    summarise,
)
from cocosnet.metrics.schema import flat_metrics
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.progress import progress
from cocosnet.tracking import Tracker
from cocosnet.train.checkpoint import load_model
from stages.common import run_stage


@torch.no_grad()
def score_matchers(cfg: Config, matchers: dict[str, torch.nn.Module], table: pd.DataFrame, *,
                   device: torch.device, bounds: bool = False) -> dict[str, dict[str, dict]]:
    """who -> level ("0" coarsest) -> epe_px / acc_1px / acc_3px / pixels, plus who = "identity".
    bounds: also the matchers' `refinement_bounds` per level."""
    root = Path(cfg.data.root)
    dataset = PairDataset(table, Path(cfg.data.processed), load_size=cfg.data.load_size,
                          crop_size=cfg.data.crop_size, random_crop=False)
    errors: dict[str, dict[int, list]] = {}
    best: dict[str, dict[int, list]] = {}
    for m in matchers.values():
        m.eval().to(device)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
    for i, batch in enumerate(progress(loader, desc="score")):
        gt, valid = batch_gt(root, table, batch, load_size=cfg.data.load_size, crop=cfg.data.crop_size)
        b = {k: v.to(device) for k, v in batch.items()}
        coords = {who: m(b["label"], b["exemplar"], b["exemplar_label"],
                         generator=torch.Generator(device=device).manual_seed(cfg.eval.seed + i)).correspondence.coords
                  for who, m in matchers.items()}
        first = next(iter(coords.values()))
        coords["identity"] = [identity_coords(*c.shape[:3]) for c in first]
        for who, per_level in coords.items():
            for level, errs in level_errors(per_level, gt, valid).items():
                errors.setdefault(who, {}).setdefault(level, []).append(errs)
            if bounds and who in matchers:
                for level, errs in level_errors(per_level, gt, valid, best_of_k=True).items():
                    best.setdefault(who, {}).setdefault(level, []).append(errs)
    result = {who: {str(level): summarise(torch.cat(e)) for level, e in sorted(levels.items())}
              for who, levels in errors.items()}
    for who, levels in best.items():
        for level, e in levels.items():
            result[who][str(level)].update(refinement_bounds(torch.cat(errors[who][level]), torch.cat(e)))
    return result


def without_gru(cfg: Config, model: CoCosNet) -> CoCosNet:
    """The same trained weights with every level's GRU update off (search only): what the GRU adds at eval."""
    c = cfg.model.correspondence
    off = replace(cfg.model, correspondence=replace(c, gru=(False,) * len(c.gru)))
    copy = CoCosNet(off)
    result = copy.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys, result.missing_keys  # only the GRU's own weights are left out
    return copy


def main(cfg, args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained, state = load_model(Path(args.model), cfg)
    torch.manual_seed(cfg.pretrain.seed)  # the untrained matcher is the one pretraining started from
    untrained = CoCosNet.from_config(cfg)
    matchers = {"trained": trained.matcher, "untrained": untrained.matcher}
    if any(cfg.model.correspondence.gru):
        matchers["trained_gru_off"] = without_gru(cfg, trained).matcher
    pairs = pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet")
    table = eval_pairs(pairs, cfg.eval.max_pairs, "self")
    with Tracker(cfg, "study_score", device=str(device)) as tracker:
        per_level = score_matchers(cfg, matchers, table, device=device)
        result = {"pairs": len(table), "steps": int(state.get("step") or 0), "crop_size": cfg.data.crop_size,
                  "per_level": per_level, "config": {k: v for k, v in asdict(cfg).items()
                                                     if k in ("model", "pretrain", "loss_weights")}}
        atomic_write_json(Path(args.out), result)
        tracker.log_metrics(flat_metrics({"correspondence": {"per_level": per_level}}), step=0)
        tracker.log_artifact(Path(args.out))
    finest = str(len(cfg.model.align.widths) - 1)
    print("study score, finest level: " + ", ".join(
        f"{who} {levels[finest]['epe_px']:.2f} px" for who, levels in per_level.items()))


def add_args(parser) -> None:
    parser.add_argument("--model", default="study/models/pretrain.pt")
    parser.add_argument("--out", default="study/score.json")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
