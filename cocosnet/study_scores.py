"""Per-level correspondence scores of matchers on the val self pairs (the study's `score` stage and its
tools): EPE and accuracy against the synthetic ground truth, beside the identity mapping."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cocosnet.config import Config
from cocosnet.data.dataset import PairDataset
from cocosnet.metrics.correspondence import (
    batch_gt,
    identity_coords,
    level_errors,
    refinement_bounds,
    summarise,
)
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.progress import progress


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
