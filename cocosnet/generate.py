"""Draw the person of an exemplar photo in a new pose: the `cocosnet generate` command's work.

A photo of any size is padded to a square (232, as `prepare` does) and resized to the model's working
size (`data.crop_size` of the model file); the keypoints of a photo are mapped into that frame
(DeepFashion-HD `*_candidate/_subset.txt` files already are in the padded 1024 frame); the output is
cropped back to the exemplar's aspect and resized to its size (or `size`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cocosnet.config import Config, config_from_dict
from cocosnet.data.deepfashion import SquareFrame, load_image, preprocess_image
from cocosnet.data.keypoints import read_keypoints, render_keypoints
from cocosnet.data.pose import JOINT_NAMES, PoseFileError
from cocosnet.errors import CheckpointError, DataError
from cocosnet.io import atomic_save
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import load_checkpoint

MIN_JOINTS = 8
PANEL_MIN_HEIGHT = 256
PAIR_COLUMNS = ("exemplar", "exemplar_pose", "pose", "out")


def load_model_file(path: str | Path, device: str = "cpu") -> tuple[CoCosNet, Config]:
    """A model file of this project (models/*.pt, or `cocosnet import-official`'s) in eval mode, built
    from the config it records."""
    path = Path(path)
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        if not path.is_file():
            raise
        reason = str(exc).split(": ", 1)[-1].split("; ")[0]  # without the stage-rerun hint
        raise CheckpointError(f"{path}: not a model file of this project ({reason}); pass models/train.pt, or "
                              "convert official weights with `cocosnet import-official`") from None
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: a checkpoint without a model and its config; pass a model file "
                              "(models/train.pt, or one written by `cocosnet import-official`)")
    try:
        cfg = config_from_dict(state["config"])
        model = CoCosNet(cfg.model)
        model.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a model of this project ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg


def pose_in_frame(path: str | Path, *, name: str | None = None) -> tuple[np.ndarray, bool]:
    """Keypoints of a pose file and whether they are in the labels' padded frame already (DeepFashion-HD
    files) rather than in a photo's pixels. Fewer than MIN_JOINTS joints is an error naming the file."""
    keypoints = read_keypoints(path, name=name)
    present = int(np.isfinite(keypoints).all(axis=1).sum())
    if present < MIN_JOINTS:
        missing = [JOINT_NAMES[j] for j in range(len(keypoints)) if not np.isfinite(keypoints[j]).all()]
        raise PoseFileError(f"{path}: only {present} of 18 joints present, at least {MIN_JOINTS} needed "
                            f"(missing: {', '.join(missing)})")
    return keypoints, Path(path).name.endswith(("_candidate.txt", "_subset.txt"))


def _label(path: str | Path, photo_size: tuple[int, int], size: int) -> np.ndarray:
    keypoints, framed = pose_in_frame(path)
    return render_keypoints(keypoints, size, photo_size=None if framed else photo_size)


def _tensor_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1


def _tensor_label(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(label)).permute(2, 0, 1).float().unsqueeze(0) / 255


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    return ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


@dataclass
class Generated:
    image: Image.Image  # at the exemplar's size (or the asked size)
    panel: Image.Image  # exemplar | target pose | finest warp | output, at the working size (x2, x4 below 256)


@torch.no_grad()
def generate_one(model: CoCosNet, cfg: Config, exemplar: str | Path, exemplar_pose: str | Path, pose: str | Path,
                 *, size: tuple[int, int] | None = None, device: str = "cpu", seed: int = 0) -> Generated:
    work = cfg.data.crop_size
    photo = load_image(Path(exemplar))
    height, width = photo.shape[:2]
    exemplar_label = _label(exemplar_pose, (width, height), work)
    # The target pose file is read in the exemplar's frame unless it is a DeepFashion-HD file.
    label = _label(pose, (width, height), work)
    square = preprocess_image(photo, work)
    x = [_tensor_label(label).to(device), _tensor_image(square).to(device), _tensor_label(exemplar_label).to(device)]
    out = model(*x, generator=torch.Generator(device=device).manual_seed(seed))
    result = _to_uint8(out.image)
    frame = SquareFrame(width, height)
    left, top = frame.offset
    scale = work / frame.side
    box = (round(left * scale), round(top * scale), round((left + width) * scale), round((top + height) * scale))
    image = Image.fromarray(result).crop(box).resize(size or (width, height), Image.Resampling.BICUBIC)
    warp = torch.nn.functional.interpolate(out.correspondence.warps[-1], size=(work, work), mode="nearest")
    panel = Image.fromarray(np.concatenate([square, label[..., :3], _to_uint8(warp), result], axis=1))
    zoom = max(1, PANEL_MIN_HEIGHT // work)  # small working sizes are enlarged, pixel for pixel
    panel = panel.resize((panel.width * zoom, panel.height * zoom), Image.Resampling.NEAREST)
    return Generated(image, panel)


def save_png(image: Image.Image, path: str | Path) -> None:
    atomic_save(Path(path), lambda f: image.save(f, format="PNG"))


def read_pairs(path: Path) -> list[dict]:
    """Rows of a pairs CSV (header exemplar,exemplar_pose,pose,out); relative paths are taken from the
    CSV's folder, except `out`, which is relative to the output folder."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise DataError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the pairs CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: no rows (expected a header {','.join(PAIR_COLUMNS)} and one row per output)")
    missing = [c for c in PAIR_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: the header lacks {missing}; expected {','.join(PAIR_COLUMNS)}")
    return rows


def run_pairs(model: CoCosNet, cfg: Config, pairs: Path, out_dir: Path, *, size: tuple[int, int] | None = None,
              device: str = "cpu", show_progress: bool = True) -> tuple[int, int, list[str]]:
    """Generate every row; an existing output is kept (resumable). Returns (made, kept, failures)."""
    from cocosnet.progress import progress

    rows = read_pairs(pairs)
    made, kept, failures = 0, 0, []
    for lineno, row in progress(list(enumerate(rows, start=2)), desc="generate", enabled=show_progress):
        if not (row.get("out") or "").strip():
            failures.append(f"{pairs}:{lineno}: empty `out`")
            continue
        dest = out_dir / row["out"].strip()
        if dest.exists():
            kept += 1
            continue
        try:
            empty = [c for c in PAIR_COLUMNS[:3] if not (row.get(c) or "").strip()]
            if empty:
                raise DataError(f"empty {', '.join(empty)}")
            paths = {c: pairs.parent / row[c].strip() for c in PAIR_COLUMNS[:3]}
            result = generate_one(model, cfg, paths["exemplar"], paths["exemplar_pose"], paths["pose"], size=size,
                                  device=device)
            save_png(result.image, dest)
            made += 1
        except (DataError, OSError, ValueError) as exc:
            failures.append(f"{pairs}:{lineno}: {exc}")
    return made, kept, failures
