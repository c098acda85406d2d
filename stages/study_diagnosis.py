"""Why does the trained correspondence not beat the identity mapping? Measurements on the val self pairs.

1. The data: the identity mapping's end-point error per pair, the view combinations, the share of
   person pixels with valid ground truth (per view combination).
2. The objective: the warp loss (L1 to the target, as `warp_self` computes it at the finest level) of
   the identity mapping, of the ground-truth warp, and of the ground truth on the person only; on the
   whole crop and on person pixels.
3. The matcher: the EPE per level of dense + PatchMatch (search only, the model's own code) when the
   features are perfect: built from the ground-truth body part and surface point of every pixel.

    python -m stages.study_diagnosis [--pairs 60] [--out reports/study/diagnosis.json]

Needs the demo data (`dvc repro build_pairs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cocosnet.config import load_config
from cocosnet.data.body import NUM_PARTS
from cocosnet.data.dataset import PairDataset
from cocosnet.data.deepfashion import SquareFrame
from cocosnet.data.synthetic import load_surface, surface_path
from cocosnet.evaluate import eval_pairs
from cocosnet.io import atomic_write_json
from cocosnet.metrics.correspondence import endpoint_errors, gt_in_crop, identity_coords, level_gt, summarise
from cocosnet.models.correspondence import HierarchicalCorrespondence
from cocosnet.models.ops import sample_at

FOURIER = 24  # random Fourier features of the surface point


def view_of(rel: str) -> str:
    return Path(rel).stem.split("_", 2)[-1]  # "01_1_front" -> "front"


def surface_in_crop(root: Path, rel: str, load_size: int, crop: int, offset: tuple[int, int]):
    """Part id (crop, crop) and surface point (crop, crop, 3) of each crop pixel (part 0 = background)."""
    s = load_surface(surface_path(root, rel))
    frame = SquareFrame(s.part.shape[1], s.part.shape[0])
    ys, xs = np.mgrid[0:crop, 0:crop]
    work = np.stack([xs + offset[0], ys + offset[1]], axis=-1).astype(np.float64)
    photo = np.rint(frame.from_frame(work, load_size)).astype(int)
    inside = ((photo[..., 0] >= 0) & (photo[..., 0] < s.part.shape[1])
              & (photo[..., 1] >= 0) & (photo[..., 1] < s.part.shape[0]))
    px, py = np.clip(photo[..., 0], 0, s.part.shape[1] - 1), np.clip(photo[..., 1], 0, s.part.shape[0] - 1)
    part = np.where(inside, s.part[py, px], 0)
    return part, s.point[py, px]


def perfect_features(part: np.ndarray, point: np.ndarray, proj: torch.Tensor) -> torch.Tensor:
    """(1, C, S, S), L2-normalised: a part one-hot, and random Fourier features of the surface point (their
    dot product falls with the surface distance, about 4 cm wide), so cosine similarity ranks matches."""
    onehot = F.one_hot(torch.from_numpy(part.astype(np.int64)), NUM_PARTS).float() * 2.0  # (S, S, P)
    phase = torch.from_numpy(point.astype(np.float32)) @ proj  # (S, S, F)
    fourier = torch.cat([phase.cos(), phase.sin()], dim=-1) / np.sqrt(FOURIER)
    fourier = fourier * torch.from_numpy(part > 0)[..., None]
    return F.normalize(torch.cat([onehot, fourier], dim=-1).permute(2, 0, 1)[None], dim=1)


def pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Coarse to fine: area-pooled and re-normalised."""
    out = [x]
    for _ in range(levels - 1):
        out.insert(0, F.normalize(F.avg_pool2d(out[0], 2), dim=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--out", default="reports/study/diagnosis.json")
    args = parser.parse_args()
    cfg = load_config(args.params)
    root, size, crop = Path(cfg.data.root), cfg.data.load_size, cfg.data.crop_size
    table = eval_pairs(pd.read_parquet(Path(cfg.data.processed) / "pairs.parquet"), args.pairs, "self")
    dataset = PairDataset(table, Path(cfg.data.processed), load_size=size, crop_size=crop, random_crop=False)
    levels = len(cfg.model.align.widths)
    search_only = dataclasses.replace(cfg.model.correspondence, gru=(False,) * (levels - 1))
    matcher = HierarchicalCorrespondence(1, search_only).eval()
    proj = torch.randn(3, FOURIER, generator=torch.Generator().manual_seed(0)) / 4.0  # ~4 cm bandwidth
    identity_epe, combos, valid_share = [], Counter(), {}
    loss = {k: [] for k in ("identity_all", "gt_all", "identity_person", "gt_person")}
    perfect: dict[int, list[torch.Tensor]] = {i: [] for i in range(levels)}
    identity_levels: dict[int, list[torch.Tensor]] = {i: [] for i in range(levels)}
    for i in range(len(dataset)):
        row, item = table.iloc[i], dataset[i]
        t_off, e_off = tuple(item["target_crop"].tolist()), tuple(item["exemplar_crop"].tolist())
        gt, valid = gt_in_crop(root, row["target"], row["exemplar"], load_size=size, crop=crop,
                               target_offset=t_off, exemplar_offset=e_off)
        t_part, t_point = surface_in_crop(root, row["target"], size, crop, t_off)
        e_part, e_point = surface_in_crop(root, row["exemplar"], size, crop, e_off)
        gt_t, valid_t = torch.from_numpy(gt)[None], torch.from_numpy(valid)[None]
        errors = endpoint_errors(identity_coords(1, crop, crop), gt_t, valid_t)
        identity_epe.append(float(errors.mean()) if errors.numel() else float("nan"))
        combo = f"{view_of(row['target'])}<-{view_of(row['exemplar'])}"
        combos[combo] += 1
        person = t_part > 0
        valid_share.setdefault(combo, []).append(float(valid[person].mean()) if person.any() else float("nan"))
        # 2. What the warp loss sees at the finest level.
        real, exemplar = item["image"][None], item["exemplar"][None]
        gt_coords = torch.where(valid_t[..., None], gt_t, identity_coords(1, crop, crop))
        gt_warp = sample_at(exemplar, gt_coords[:, :, :, None])[..., 0]
        mask = torch.from_numpy(person)[None, None].float()
        for name, warp in (("identity", exemplar), ("gt", gt_warp)):
            diff = (warp - real).abs().mean(1, keepdim=True)
            loss[f"{name}_all"].append(float(diff.mean()))
            loss[f"{name}_person"].append(float((diff * mask).sum() / mask.sum().clamp_min(1)))
        # 3. The matcher with perfect features.
        query = pyramid(perfect_features(t_part, t_point, proj), levels)
        key = pyramid(perfect_features(e_part, e_point, proj), levels)
        with torch.no_grad():
            out = matcher(query, key, exemplar, generator=torch.Generator().manual_seed(i))
        for level, coords in enumerate(out.coords):
            lg, lv = level_gt(gt_t, valid_t, tuple(coords.shape[1:3]))
            perfect[level].append(endpoint_errors(coords[..., 0, :], lg, lv))
            identity_levels[level].append(endpoint_errors(identity_coords(1, *coords.shape[1:3]), lg, lv))
    epe = np.array(identity_epe)
    result = {
        "pairs": len(dataset), "crop_size": crop, "levels": levels,
        "data": {
            "identity_epe_finest_px": {"mean": float(np.nanmean(epe)),
                                       **{f"p{q}": float(np.nanpercentile(epe, q)) for q in (10, 25, 50, 75, 90)}},
            "view_combinations": dict(combos.most_common()),
            "valid_share_of_person_pixels": {k: float(np.nanmean(v)) for k, v in sorted(valid_share.items())},
        },
        "warp_loss_finest_l1": {k: float(np.mean(v)) for k, v in loss.items()},
        "perfect_features_search_only": {str(level): summarise(torch.cat(v)) for level, v in perfect.items()},
        "identity": {str(level): summarise(torch.cat(v)) for level, v in identity_levels.items()},
    }
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
