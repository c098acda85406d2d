"""Evaluation on the val split.

* Self pairs (exemplar and target show the same clothes): paired metrics of the
  output against the true target (L1, PSNR, SSIM), and, where the synthetic
  ground truth exists, correspondence accuracy per level for the trained model,
  the same architecture untrained, and the identity mapping.
* Ref pairs (another person's clothes): set metrics, SWD and FID, of the outputs
  against the targets, by the CoCosNet protocol.

Every output is written as JPG with a stable name (`<set>/{fake,real,exemplar,warp}/<n>.jpg`,
the pair recorded in `<set>/pairs.csv`), and every image metric is computed from
those files, so a folder can be re-scored by any tool and give the same numbers.
Two baselines are scored the same way: "copy_exemplar", the exemplar itself as the
output, and "finest_warp", the finest correspondence level's warp of the exemplar
(resized to the output's size where it differs): the generator's own input, so the
image it adds must beat it.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from cocosnet.config import Config
from cocosnet.data.dataset import PairDataset
from cocosnet.data.deepfashion import load_image, photo_size
from cocosnet.data.sources import layout_for
from cocosnet.data.synthetic import surface_path
from cocosnet.io import Staging, atomic_save
from cocosnet.metrics.correspondence import batch_gt, identity_coords, level_errors, summarise
from cocosnet.metrics.fid import FidUnavailable
from cocosnet.metrics.images import list_images
from cocosnet.metrics.lpips import LpipsUnavailable, load_lpips, lpips_distance
from cocosnet.metrics.paired import l1, psnr, ssim
from cocosnet.metrics.pose_transfer import crop_to_photo, describe, pose_transfer_fid, pose_transfer_ssim
from cocosnet.metrics.scoring import fid_scores, paired_scores, swd_scores
from cocosnet.models.blocks import resize_to
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.progress import progress
from cocosnet.train.samples import sample_grid, to_uint8

ROLES = ("fake", "real", "exemplar", "warp")
LPIPS_UNSET = "LPIPS was not asked for (no eval.lpips_weights / eval.alexnet_weights given)"


def eval_pairs(pairs: pd.DataFrame, max_pairs: int, kind: str = "self") -> pd.DataFrame:
    """Val pairs of `kind`, one per target first, in table order (deterministic)."""
    val = pairs[(pairs["split"] == "val") & (pairs["kind"] == kind)]
    val = pd.concat([val.drop_duplicates("target"), val[val.duplicated("target")]]).reset_index(drop=True)
    return val.head(max_pairs) if max_pairs > 0 else val


@dataclass
class Generated:
    """What a pass over one pair set leaves behind besides its JPGs."""
    folder: Path
    errors: dict[str, dict[int, torch.Tensor]]  # who -> level -> endpoint errors of valid pixels
    grid: Image.Image | None


def _save_jpg(array: np.ndarray, path: Path, quality: int) -> None:
    atomic_save(path, lambda f: Image.fromarray(array).save(f, format="JPEG", quality=quality))


@torch.no_grad()
def generate(cfg: Config, trained: CoCosNet, untrained: CoCosNet | None, table: pd.DataFrame, out: Path, *,
             device: torch.device, with_gt: bool, fingerprint: str = "") -> Generated:
    """Run the model over `table`, writing JPGs into `out`.

    Staged in `<out>.partial/`: a killed run keeps its finished batches, which a
    rerun with the same model `fingerprint`, pairs and settings reuses."""
    pose_transfer = cfg.eval.protocol == "pose_transfer"
    suffix = ".png" if pose_transfer else ".jpg"
    spec = {"model": fingerprint, "pairs": table[["target", "exemplar"]].values.tolist(),
            "quality": cfg.eval.jpeg_quality, "seed": cfg.eval.seed, "batch": cfg.eval.batch_size,
            "crop": cfg.data.crop_size, "roles": list(ROLES), "protocol": cfg.eval.protocol}
    # Staged beside the tracked outputs folder, not inside it, so a failed run leaves DVC's output unmodified.
    staging = Staging(out, spec, path=out.parent.with_name(out.parent.name + ".partial") / out.name)
    for role in ROLES:
        (staging.path / role).mkdir(exist_ok=True)
    (staging.path / "corr").mkdir(exist_ok=True)
    root = Path(cfg.data.root)
    dataset = PairDataset(table, Path(cfg.data.processed), load_size=cfg.data.load_size,
                          crop_size=cfg.data.crop_size, random_crop=False)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
    trained.eval().to(device)
    if untrained is not None:
        untrained.eval().to(device)
    errors: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    grid = None
    for i, batch in enumerate(progress(loader, desc=f"evaluate {out.name}")):
        names = [f"{int(j):05d}{suffix}" for j in batch["index"]]
        corr_file = staging.path / "corr" / f"{i:05d}.pt"
        done = all((staging.path / r / n).exists() for r in ROLES for n in names) and (
            not with_gt or corr_file.exists())
        if done and i > 0:
            saved = torch.load(corr_file, weights_only=True) if with_gt else {}
            for who, levels in saved.items():
                for level, errs in levels.items():
                    errors[who][level].append(errs)
            continue
        b = {k: v.to(device) for k, v in batch.items()}
        gen = torch.Generator(device=device).manual_seed(cfg.eval.seed + i)
        result = trained(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        if i == 0:
            grid = evaluation_grid(batch, [w.cpu() for w in result.correspondence.warps], result.image.cpu(), rows=6)
        if with_gt:
            batch_errors = _correspondence_errors(cfg, root, table, batch, b, result, untrained, device, i)
            torch.save(batch_errors, corr_file)
            for who, levels in batch_errors.items():
                for level, errs in levels.items():
                    errors[who][level].append(errs)
        finest = resize_to(result.correspondence.warps[-1], tuple(result.image.shape[-2:]), "bilinear")
        rows = [table.iloc[int(j)] for j in batch["index"]]
        for role, images in (("fake", result.image), ("real", batch["image"]), ("exemplar", batch["exemplar"]),
                             ("warp", finest)):
            for name, image, row in zip(names, images, rows):
                if pose_transfer:
                    _save_pose_transfer(role, to_uint8(image.cpu()), row, root, staging.path / role / name)
                else:
                    _save_jpg(to_uint8(image.cpu()), staging.path / role / name, cfg.eval.jpeg_quality)
    table.assign(name=[f"{n:05d}{suffix}" for n in range(len(table))])[["name", "target", "exemplar"]].to_csv(
        staging.path / "pairs.csv", index=False)
    shutil.rmtree(staging.path / "corr")
    folder = staging.commit()
    merged = {who: {level: torch.cat(v) for level, v in levels.items()} for who, levels in errors.items()}
    return Generated(folder, merged, grid)


def _save_pose_transfer(role: str, square: np.ndarray, row: pd.Series, root: Path, path: Path) -> None:
    """The pose-transfer protocol's file for one role (cocosnet/metrics/pose_transfer.py): the target and
    the exemplar as the dataset's own photos; the output and the warp cropped back to the target photo's
    region and size; PNG."""
    if role in ("real", "exemplar"):
        image = load_image(root / row["target" if role == "real" else "exemplar"])
        size = photo_size(root / row["target"])
        if image.shape[1::-1] != size:  # an exemplar photo of another size: scored at the target's
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    else:
        image = crop_to_photo(square, photo_size(root / row["target"]))
    atomic_save(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


ERROR_GAIN = 4  # an error map's white is a mean absolute error of 1/ERROR_GAIN of the intensity range


def error_map(image: Tensor, target: Tensor) -> Tensor:
    """|image - target| averaged over RGB, as a grey (3, H, W) image in [-1, 1] (both inputs in [-1, 1]):
    black where they agree, white where they differ by 1/ERROR_GAIN of the range or more."""
    err = (image - target).abs().mean(0, keepdim=True) / 2 * ERROR_GAIN
    return (err.clamp(0, 1) * 2 - 1).expand(3, -1, -1)


def evaluation_grid(batch: dict, warps: list[Tensor], output: Tensor, *, rows: int) -> Image.Image:
    """The sample grid (exemplar | pose | warp per level | output | target), then the error maps of the
    finest warp and of the output against the target, so a reader sees where the generator adds and where
    it loses."""
    base = np.asarray(sample_grid(batch, warps, output, rows=rows))
    size = tuple(batch["image"].shape[-2:])
    maps = []
    for i in range(min(rows, batch["image"].shape[0])):
        finest = resize_to(warps[-1][i:i + 1].float(), size, "bilinear")[0]
        target = batch["image"][i]
        maps.append(np.concatenate([to_uint8(error_map(finest, target)), to_uint8(error_map(output[i], target))],
                                   axis=1))
    return Image.fromarray(np.concatenate([base, np.concatenate(maps, axis=0)], axis=1))


def _correspondence_errors(cfg, root, table, batch, b, result, untrained, device, i) -> dict:
    gt, valid = batch_gt(root, table, batch, load_size=cfg.data.load_size, crop=cfg.data.crop_size)
    predictions = {"trained": result.correspondence.coords}
    if untrained is not None:
        base = untrained.matcher(b["label"], b["exemplar"], b["exemplar_label"],
                                 generator=torch.Generator(device=device).manual_seed(cfg.eval.seed + i))
        predictions["untrained"] = base.correspondence.coords
    predictions["identity"] = [identity_coords(*c.shape[:3]) for c in result.correspondence.coords]
    return {who: level_errors(coords, gt, valid) for who, coords in predictions.items()}


def _role_files(folder: Path) -> dict[str, list[Path]]:
    files = {role: list_images(folder / role) for role in ROLES}
    names = {role: [p.name for p in paths] for role, paths in files.items()}
    if any(names[role] != names["real"] for role in ROLES):
        raise ValueError(f"{folder}: {', '.join(f'{r}/' for r in ROLES)} must hold the same file names")
    return files


def _candidates(files: dict[str, list[Path]]) -> dict[str, list[Path]]:
    return {"model": files["fake"], "finest_warp": files["warp"], "copy_exemplar": files["exemplar"]}


def lpips_metric(cfg: Config, device: torch.device) -> tuple[Callable | None, str]:
    """The LPIPS function of (fake, real) batches, or None and the reason it is unavailable."""
    try:
        model = load_lpips(cfg.eval.lpips_weights, cfg.eval.alexnet_weights).to(device)
    except LpipsUnavailable as exc:
        return None, str(exc)
    return partial(lpips_distance, model), ""


def paired_metrics(folder: Path, *, protocol: str = "cocosnet", lpips: Callable | None = None,
                   lpips_unavailable: str = LPIPS_UNSET, ssim_sigma: float = 1.5) -> dict:
    """L1 / PSNR / SSIM (the protocol's variant) and LPIPS when given, of the output and of both baselines
    (the finest warp, the copied exemplar) against the target, from the saved files."""
    files = _role_files(folder)
    functions = {"l1": l1, "psnr": psnr,
                 "ssim": partial(pose_transfer_ssim, sigma=ssim_sigma) if protocol == "pose_transfer" else ssim}
    if lpips is not None:
        functions["lpips"] = lpips
    out: dict = paired_scores(files["real"], _candidates(files), functions=functions)
    if lpips is None:
        out["lpips"] = {"unavailable": lpips_unavailable}
    return out


def set_metrics(cfg: Config, folder: Path, *, device: torch.device) -> tuple[dict, dict]:
    """SWD and FID of the output and of both baselines against the targets, from the JPGs."""
    files = _role_files(folder)
    per_level = swd_scores(files["real"], _candidates(files), size=cfg.eval.swd_size, seed=cfg.eval.seed,
                           device=device)
    swd = {who: levels["avg"] for who, levels in per_level.items()}
    finest = int(next(iter(per_level["model"])))  # levels are listed finest first
    shared = swd_scores(files["real"], _candidates(files), size=cfg.eval.swd_size, seed=cfg.eval.seed,
                        device=device, independent_draws=False)
    swd.update(per_level=per_level, images=len(files["real"]), resolution=finest, seed=cfg.eval.seed,
               shared_draws={who: levels["avg"] for who, levels in shared.items()})
    try:
        fid = fid_scores(files["real"], _candidates(files), weights=cfg.eval.inception_weights, device=device)
    except FidUnavailable as exc:
        return swd, {"unavailable": str(exc)}
    fid.update(images=len(files["real"]), weights=Path(cfg.eval.inception_weights).name)
    return swd, fid


def correspondence_metrics(errors: dict[str, dict[int, torch.Tensor]]) -> dict:
    per_level = {who: {str(level): summarise(errs) for level, errs in sorted(levels.items())}
                 for who, levels in errors.items()}
    finest = str(max(int(k) for k in per_level["trained"]))
    out = {m: {who: per_level[who][finest][m] for who in per_level} for m in ("epe_px", "acc_1px", "acc_3px")}
    out["per_level"] = per_level
    return out


def evaluate(cfg: Config, trained: CoCosNet, untrained: CoCosNet, pairs: pd.DataFrame, *,
             device: torch.device, outputs: Path, fingerprint: str = "") -> tuple[dict, dict[str, Image.Image]]:
    """The metrics dict (reports/metrics.json) and the sample grids, one per pair set."""
    self_table = eval_pairs(pairs, cfg.eval.max_pairs, "self")
    ref_table = eval_pairs(pairs, cfg.eval.max_pairs, "ref")
    if self_table.empty and ref_table.empty:
        raise ValueError("the pair table has no val pairs to evaluate (split == 'val')")
    root = Path(cfg.data.root)
    has_gt = bool(len(self_table)) and surface_path(root, self_table.iloc[0]["target"]).exists()
    metrics: dict = {"pairs": len(self_table), "ref_pairs": len(ref_table), "jpeg_quality": cfg.eval.jpeg_quality,
                     "protocol": describe(cfg.eval.protocol, fid_input=cfg.eval.pose_transfer_fid_input,
                                          ssim_sigma=cfg.eval.pose_transfer_ssim_sigma)}
    grids: dict[str, Image.Image] = {}
    lpips, lpips_unavailable = lpips_metric(cfg, device)
    self_folder = None
    if len(self_table):
        done = generate(cfg, trained, untrained if has_gt else None, self_table, outputs / "self",
                        device=device, with_gt=has_gt, fingerprint=fingerprint)
        self_folder = done.folder
        metrics["paired"] = paired_metrics(done.folder, protocol=cfg.eval.protocol, lpips=lpips,
                                           lpips_unavailable=lpips_unavailable,
                                           ssim_sigma=cfg.eval.pose_transfer_ssim_sigma)
        if has_gt:
            metrics["correspondence"] = correspondence_metrics(done.errors)
        if done.grid is not None:
            grids["self"] = done.grid
    if len(ref_table):
        done = generate(cfg, trained, None, ref_table, outputs / "ref", device=device, with_gt=False,
                        fingerprint=fingerprint)
        metrics["swd"], metrics["fid"] = set_metrics(cfg, done.folder, device=device)
        if done.grid is not None:
            grids["ref"] = done.grid
    else:
        reason = "no val ref pairs in the pair table"
        metrics["swd"], metrics["fid"] = {"unavailable": reason}, {"unavailable": reason}
    if cfg.eval.protocol == "pose_transfer":
        metrics["fid"] = training_split_fid(cfg, self_folder, device=device)
    return metrics, grids


def training_split_fid(cfg: Config, folder: Path | None, *, device: torch.device) -> dict:
    """The pose-transfer protocol's FID: the val self pairs' outputs (and baselines) against the statistics
    of every training image the layout lists (torchvision's ImageNet Inception-v3)."""
    if folder is None:
        return {"unavailable": "no val self pairs in the pair table"}
    root = Path(cfg.data.root)
    train = [root / e.paths[0] for e in layout_for(cfg.data.source).lists(root)["train"]]
    train = [p for p in dict.fromkeys(train) if p.is_file()]
    if len(train) < 2:
        return {"unavailable": f"the training split of {root} lists {len(train)} existing images"}
    try:
        return pose_transfer_fid(train, _candidates(_role_files(folder)), weights=cfg.eval.imagenet_inception_weights,
                                 cache=Path(cfg.data.processed) / "fid_train_statistics.npz",
                                 input_transform=cfg.eval.pose_transfer_fid_input, device=device)
    except FidUnavailable as exc:
        return {"unavailable": str(exc)}
