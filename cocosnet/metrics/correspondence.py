"""Correspondence accuracy against the synthetic ground truth, in the model's working frame.

The ground truth lives in photo pixels (`cocosnet.data.synthetic`); the model
sees the photo padded to a square, resized to load_size and cropped. This
module maps between the two, then scores the model's top-1 candidates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cocosnet.data.deepfashion import SquareFrame
from cocosnet.data.synthetic import correspondence, load_surface, surface_path


def _crop_in_photo(shape: tuple[int, int], *, load_size: int, crop: int,
                   offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pixel of a crop (at `offset` in the load_size frame) of a photo of `shape` (H, W): the
    photo pixel it shows, (px, py) clipped into the photo, and whether it lies inside the photo."""
    height, width = shape
    ys, xs = np.mgrid[0:crop, 0:crop]
    work = np.stack([xs + offset[0], ys + offset[1]], axis=-1).astype(np.float64)
    photo = np.rint(SquareFrame(width, height).from_frame(work, load_size)).astype(int)
    inside = (photo[..., 0] >= 0) & (photo[..., 0] < width) & (photo[..., 1] >= 0) & (photo[..., 1] < height)
    return np.clip(photo[..., 0], 0, width - 1), np.clip(photo[..., 1], 0, height - 1), inside


def gt_in_crop(root: Path, target: str, exemplar: str, *, load_size: int, crop: int,
               target_offset: tuple[int, int], exemplar_offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """GT for every pixel of the target crop: exemplar-crop (x, y) (crop, crop, 2) and validity (crop, crop)."""
    st, se = load_surface(surface_path(root, target)), load_surface(surface_path(root, exemplar))
    coords, valid = correspondence(st, se)
    e_frame = SquareFrame(se.part.shape[1], se.part.shape[0])
    px, py, inside = _crop_in_photo(st.part.shape, load_size=load_size, crop=crop, offset=target_offset)
    ok = inside & valid[py, px]
    gt = e_frame.to_frame(coords[py, px].astype(np.float64), load_size) - np.asarray(exemplar_offset)
    ok &= (gt[..., 0] >= 0) & (gt[..., 0] <= crop - 1) & (gt[..., 1] >= 0) & (gt[..., 1] <= crop - 1)
    return gt.astype(np.float32), ok


def person_in_crop(root: Path, target: str, *, load_size: int, crop: int,
                   target_offset: tuple[int, int]) -> np.ndarray:
    """(crop, crop) bool: the target crop's pixels on the body (the synthetic surface's part map)."""
    st = load_surface(surface_path(root, target))
    px, py, inside = _crop_in_photo(st.part.shape, load_size=load_size, crop=crop, offset=target_offset)
    return inside & (st.part[py, px] > 0)


def batch_regions(root: Path, table, batch: dict, *, load_size: int, crop: int) -> dict[str, Tensor]:
    """Masks (B, crop, crop) of a PairDataset batch: `background`, `matched` (body pixels with a true
    match in the exemplar crop) and `unmatched` (body pixels without one: hidden or cropped away)."""
    _, valid = batch_gt(root, table, batch, load_size=load_size, crop=crop)
    person = torch.from_numpy(np.stack([
        person_in_crop(root, table.iloc[int(j)]["target"], load_size=load_size, crop=crop,
                       target_offset=tuple(t.tolist()))
        for j, t in zip(batch["index"], batch["target_crop"])]))
    return {"background": ~person, "matched": person & valid, "unmatched": person & ~valid}


def level_gt(gt: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """GT at a coarser level: sample at the level's pixel centres, express in level pixels.

    gt (B, S, S, 2), valid (B, S, S) -> (B, h, w, 2), (B, h, w)."""
    b, s, _, _ = gt.shape
    h, w = size
    scale_y, scale_x = s / h, s / w
    ys = ((torch.arange(h) + 0.5) * scale_y - 0.5).round().long().clamp(0, s - 1)
    xs = ((torch.arange(w) + 0.5) * scale_x - 0.5).round().long().clamp(0, s - 1)
    g = gt[:, ys][:, :, xs]
    v = valid[:, ys][:, :, xs]
    level = (g + 0.5) / torch.tensor([scale_x, scale_y]) - 0.5
    return level, v


def identity_coords(batch: int, height: int, width: int) -> Tensor:
    """The identity mapping as level coordinates: (B, h, w, 2) with (x, y) = the pixel itself."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys], dim=-1).expand(batch, height, width, 2)


def endpoint_errors(pred: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """pred, gt (B, h, w, 2); valid (B, h, w) -> the errors of valid pixels (N,)."""
    return (pred - gt).norm(dim=-1)[valid]


def summarise(errors: Tensor) -> dict[str, float]:
    if errors.numel() == 0:
        return {"epe_px": float("nan"), "acc_1px": float("nan"), "acc_3px": float("nan"), "pixels": 0}
    return {"epe_px": float(errors.mean()), "acc_1px": float((errors <= 1).float().mean()),
            "acc_3px": float((errors <= 3).float().mean()), "pixels": int(errors.numel())}


def batch_gt(root: Path, table, batch: dict, *, load_size: int, crop: int) -> tuple[Tensor, Tensor]:
    """GT of a PairDataset batch over `table`: (B, crop, crop, 2) exemplar-crop (x, y) and validity."""
    gts, valids = zip(*(gt_in_crop(root, table.iloc[int(j)]["target"], table.iloc[int(j)]["exemplar"],
                                   load_size=load_size, crop=crop, target_offset=tuple(t.tolist()),
                                   exemplar_offset=tuple(e.tolist()))
                        for j, t, e in zip(batch["index"], batch["target_crop"], batch["exemplar_crop"])))
    return torch.from_numpy(np.stack(gts)), torch.from_numpy(np.stack(valids))


def level_errors(coords: list[Tensor], gt: Tensor, valid: Tensor, *, best_of_k: bool = False) -> dict[int, Tensor]:
    """Top-1 end-point errors per level. coords: per level (B, h, w, k, 2) or (B, h, w, 2), best first.
    best_of_k: the error of the candidate nearest the truth instead (what a perfect re-ranking would reach)."""
    out = {}
    for level, c in enumerate(coords):
        c = c if c.dim() == 5 else c.unsqueeze(3)
        lg, lv = level_gt(gt, valid, tuple(c.shape[1:3]))
        per_candidate = (c.cpu() - lg.unsqueeze(3)).norm(dim=-1)  # (B, h, w, k)
        errors = per_candidate.min(dim=-1).values if best_of_k else per_candidate[..., 0]
        out[level] = errors[lv]
    return out


def refinement_bounds(errors: Tensor, best_of_k: Tensor) -> dict[str, float]:
    """What a refinement of the top-1 matches could still gain, from the same pixels' errors:
    `epe_beyond_3px`, the EPE left if every match within 3 px became exact (the floor of any local
    refinement), `best_of_k_epe_px`, the EPE if the best of the k candidates were ranked first, and
    `rank_acc`, the share of pixels whose first candidate is the best of the k (ties count)."""
    if not errors.numel():
        return {"epe_beyond_3px": float("nan"), "best_of_k_epe_px": float("nan"), "rank_acc": float("nan")}
    return {"epe_beyond_3px": float((errors * (errors > 3)).mean()), "best_of_k_epe_px": float(best_of_k.mean()),
            "rank_acc": float((errors <= best_of_k + 1e-6).float().mean())}
