"""Evaluation on the val split: correspondence accuracy against the synthetic ground truth
(trained model vs the same architecture untrained) and paired metrics of the generated image
against the true target (model vs simply copying the exemplar).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cocosnet.config import Config
from cocosnet.data.dataset import PairDataset
from cocosnet.data.synthetic import surface_path
from cocosnet.metrics.correspondence import endpoint_errors, gt_in_crop, level_gt, summarise
from cocosnet.metrics.paired import l1, psnr, ssim
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.progress import progress
from cocosnet.train.samples import sample_grid

PAIRED = {"l1": l1, "psnr": psnr, "ssim": ssim}


def eval_pairs(pairs: pd.DataFrame, max_pairs: int) -> pd.DataFrame:
    """Val self pairs (the paired setting), one per target first, deterministic."""
    val = pairs[(pairs["split"] == "val") & (pairs["kind"] == "self")]
    val = pd.concat([val.drop_duplicates("target"), val[val.duplicated("target")]]).reset_index(drop=True)
    return val.head(max_pairs) if max_pairs > 0 else val


@torch.no_grad()
def evaluate(cfg: Config, trained: CoCosNet, untrained: CoCosNet, pairs: pd.DataFrame, *,
             device: torch.device, grid_path: Path | None = None) -> dict:
    """Return the metrics dict (see reports/metrics.json) and write a sample grid."""
    table = eval_pairs(pairs, cfg.eval.max_pairs)
    root = Path(cfg.data.root)
    dataset = PairDataset(table, Path(cfg.data.processed), load_size=cfg.data.load_size,
                          crop_size=cfg.data.crop_size, random_crop=False)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
    trained.eval().to(device)
    untrained.eval().to(device)
    errors: dict[str, dict[int, list]] = {"trained": defaultdict(list), "untrained": defaultdict(list)}
    paired: dict[str, dict[str, list]] = {name: defaultdict(list) for name in PAIRED}
    has_gt = surface_path(root, table.iloc[0]["target"]).exists() if len(table) else False
    for i, batch in enumerate(progress(loader, desc="evaluate")):
        b = {k: v.to(device) for k, v in batch.items()}
        gen = torch.Generator(device=device).manual_seed(cfg.eval.seed + i)
        out = trained(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        base = untrained.matcher(b["label"], b["exemplar"], b["exemplar_label"],
                                 generator=torch.Generator(device=device).manual_seed(cfg.eval.seed + i))
        for name, fn in PAIRED.items():
            paired[name]["model"].append(fn(out.image, b["image"]).cpu())
            paired[name]["copy_exemplar"].append(fn(b["exemplar"], b["image"]).cpu())
        if has_gt:
            gts, valids = zip(*(gt_in_crop(root, table.iloc[int(j)]["target"], table.iloc[int(j)]["exemplar"],
                                           load_size=cfg.data.load_size, crop=cfg.data.crop_size,
                                           target_offset=tuple(t.tolist()), exemplar_offset=tuple(e.tolist()))
                                for j, t, e in zip(batch["index"], batch["target_crop"], batch["exemplar_crop"])))
            gt, valid = torch.from_numpy(np.stack(gts)), torch.from_numpy(np.stack(valids))
            for name, result in (("trained", out), ("untrained", base)):
                for level, coords in enumerate(result.correspondence.coords):
                    lg, lv = level_gt(gt, valid, tuple(coords.shape[1:3]))
                    errors[name][level].append(endpoint_errors(coords[..., 0, :].cpu(), lg, lv))
        if i == 0 and grid_path is not None:
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            sample_grid(batch, [w.cpu() for w in out.correspondence.warps], out.image.cpu(), rows=6).save(grid_path)

    def mean(values: list) -> float:
        return float(torch.cat(values).float().mean())

    metrics: dict = {"pairs": len(table),
                     "paired": {name: {k: mean(v) for k, v in d.items()} for name, d in paired.items()}}
    if has_gt:
        finest = len(trained.matcher.correspondence.levels)
        per_level = {name: {str(level): summarise(torch.cat(errs)) for level, errs in by_level.items()}
                     for name, by_level in errors.items()}
        metrics["correspondence"] = {
            "epe_px": {name: per_level[name][str(finest)]["epe_px"] for name in per_level},
            "acc_3px": {name: per_level[name][str(finest)]["acc_3px"] for name in per_level},
            "per_level": per_level,
        }
    return metrics
