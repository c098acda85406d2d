"""Draw the person of an exemplar photo in a new pose: the `cocosnet generate` command's work.

A photo of any size is padded to a square (232, as `prepare` does) and resized to the model's working
size (`data.crop_size` of the model file); the keypoints of a photo are mapped into that frame
(DeepFashion-HD `*_candidate/_subset.txt` files already are in the padded 1024 frame); the output is
cropped back to the exemplar's aspect and resized to its size (or `size`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cocosnet.config import Config, config_from_dict, saved_config, short
from cocosnet.data.deepfashion import SquareFrame, load_image, preprocess_image
from cocosnet.data.keypoints import AmbiguousPoseFile, photo_to_frame, read_keypoints, render_keypoints
from cocosnet.data.pose import JOINT_NAMES, PoseFileError, drawn_joints
from cocosnet.errors import CheckpointError, CocosnetError, DataError
from cocosnet.io import atomic_save, sha256_file
from cocosnet.limits import open_image, read_text, regular_file
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.checkpoint import load_checkpoint

MIN_JOINTS = 8
PANEL_MIN_HEIGHT = 256
PAIR_COLUMNS = ("exemplar", "exemplar_pose", "pose", "out")
NAME_COLUMNS = ("exemplar_pose_name", "pose_name")  # optional: the entry of a keypoint file with several
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95
MADE_BY = "cocosnet-generate"


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
        raise CheckpointError(f"{path}: not a model file of this project ({reason}); pass models/refine.pt, or "
                              "convert official weights with `cocosnet import-official`") from None
    if "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: a checkpoint without a model and its config; pass a model file "
                              "(models/refine.pt, or one written by `cocosnet import-official`)")
    try:
        cfg = config_from_dict(saved_config(state["config"]))
        model = CoCosNet(cfg.model)
        model.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a model of this project ({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg


def pose_in_frame(path: str | Path, photo_size: tuple[int, int], *, name: str | None = None,
                  photo: str | Path | None = None) -> np.ndarray:
    """Keypoints of a pose file in the labels' padded 1024 frame: DeepFashion-HD files are in it already,
    the others in the (width, height) photo's pixels. A file with several entries (COCO, pose-transfer
    CSV) is read at `name`, or else at the `photo`'s file name. Fewer than MIN_JOINTS joints that land
    on the label (joints far outside the photo are not drawn) is an error naming the file."""
    try:
        keypoints = read_keypoints(path, name=name)
    except AmbiguousPoseFile:
        if name is not None or photo is None:
            raise
        keypoints = read_keypoints(path, name=Path(photo).name)
    if not Path(path).name.endswith(("_candidate.txt", "_subset.txt")):
        keypoints = photo_to_frame(keypoints, photo_size)
    drawn = drawn_joints(keypoints)
    if drawn.sum() < MIN_JOINTS:
        present = np.isfinite(keypoints).all(axis=1)
        missing = [JOINT_NAMES[j] for j in range(len(keypoints)) if not present[j]]
        outside = [JOINT_NAMES[j] for j in range(len(keypoints)) if present[j] and not drawn[j]]
        raise PoseFileError(f"{path}: only {int(drawn.sum())} of 18 joints present in the picture, at least "
                            f"{MIN_JOINTS} needed (missing: {', '.join(missing) or 'none'}; outside the photo: "
                            f"{', '.join(outside) or 'none'})")
    return keypoints


def _label(path: str | Path, photo_size: tuple[int, int], size: int, name: str | None,
           photo: str | Path | None = None) -> np.ndarray:
    return render_keypoints(pose_in_frame(path, photo_size, name=name, photo=photo), size)


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
                 *, size: tuple[int, int] | None = None, device: str = "cpu", seed: int = 0,
                 exemplar_pose_name: str | None = None, pose_name: str | None = None) -> Generated:
    """`*_name` choose the entry of a keypoint file with several (by default the exemplar's own file name
    for its pose)."""
    work = cfg.data.crop_size
    photo = load_image(Path(exemplar))
    height, width = photo.shape[:2]
    exemplar_label = _label(exemplar_pose, (width, height), work, exemplar_pose_name, photo=exemplar)
    # The target pose file is read in the exemplar's frame unless it is a DeepFashion-HD file.
    label = _label(pose, (width, height), work, pose_name)
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


def output_format(path: str | Path) -> str:
    """The Pillow format an output name asks for: .png or .jpg/.jpeg."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: expected an output name ending in .png, .jpg or .jpeg")
    return fmt


def save_image(image: Image.Image, path: str | Path, *, made_by: str = "") -> None:
    """Write `image` in the format its name asks for, atomically; `made_by` is recorded in the file (a PNG
    text chunk, a JPEG comment) so that a rerun of `--pairs` knows what made it."""
    fmt = output_format(path)
    options: dict = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    if made_by and fmt == "PNG":
        info = PngInfo()
        info.add_text(MADE_BY, made_by)
        options["pnginfo"] = info
    elif made_by:
        options["comment"] = f"{MADE_BY}={made_by}"
    atomic_save(Path(path), lambda f: image.save(f, format=fmt, **options))


def made_by_of(path: Path) -> str | None:
    """The `made_by` record of an output written by `save_image`; None when it has none or is unreadable."""
    try:
        with open_image(path) as im:
            if MADE_BY in im.info:
                return str(im.info[MADE_BY])
            comment = im.info.get("comment", b"")
    except (CocosnetError, OSError, ValueError):
        return None
    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    return text.split("=", 1)[1] if text.startswith(MADE_BY + "=") else None


def output_path(out_dir: Path, raw: str) -> Path:
    """`raw` (a pairs CSV's `out`) inside the resolved `out_dir`, or DataError: absolute paths, `..` that
    climbs out, and symlinks that lead out are refused."""
    text = (raw or "").strip()
    if not text:
        raise DataError("empty `out`")
    root = Path(out_dir).resolve()
    try:
        if Path(text).is_absolute():
            raise DataError(f"`out` {short(text)} is absolute; it must be a path inside --out-dir")
        dest = (root / text).resolve()
    except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
        raise DataError(f"`out` {short(text)} is not a usable path ({exc})") from None
    if dest == root or not dest.is_relative_to(root):
        raise DataError(f"`out` {short(text)} leads to {short(str(dest))}, outside --out-dir {root}; refused")
    output_format(text)
    return dest


def made_by_key(model_sha: str, size: tuple[int, int] | None, files: list[Path], names: list[str | None]) -> str:
    """What made an output: the model file, the asked size and the row's input files and names."""
    record = {"model": model_sha, "size": list(size) if size else None, "names": names,
              "files": [sha256_file(regular_file(path, "photo or keypoint file")) for path in files]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def read_pairs(path: Path) -> list[dict]:
    """Rows of a pairs CSV (header exemplar,exemplar_pose,pose,out[,exemplar_pose_name][,pose_name]);
    relative paths are taken from the CSV's folder, except `out`, which is relative to the output folder."""
    try:
        text = read_text(path, "pairs CSV")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        header = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise DataError(f"{path}: pairs file not found") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the pairs CSV ({str(exc)[:160]})") from None
    if not rows:
        raise DataError(f"{path}: no rows (expected a header {','.join(PAIR_COLUMNS)} and one row per output)")
    missing = [c for c in PAIR_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: the header lacks {missing}; expected {','.join(PAIR_COLUMNS)}")
    return rows


@dataclass
class PairsRun:
    made: int = 0
    kept: int = 0  # made before by the same model, size and inputs
    replaced: int = 0  # made before by another model, size or inputs, and made again
    failures: list[str] = field(default_factory=list)


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def run_pairs(model: CoCosNet, cfg: Config, pairs: Path, out_dir: Path, *, model_sha: str,
              size: tuple[int, int] | None = None, device: str = "cpu", show_progress: bool = True) -> PairsRun:
    """Generate every row. An output made before by the same model file (`model_sha`), size and inputs is
    kept (resumable); one made by anything else is made again; a file there that this command did not
    write is left alone and its row fails. A bad row is reported and the others go on."""
    from cocosnet.progress import progress

    rows = read_pairs(pairs)
    result = PairsRun()
    for lineno, row in progress(list(enumerate(rows, start=2)), desc="generate", enabled=show_progress):
        try:
            dest = output_path(out_dir, _cell(row, "out"))
            empty = [c for c in PAIR_COLUMNS[:3] if not _cell(row, c)]
            if empty:
                raise DataError(f"empty {', '.join(empty)}")
            paths = {c: pairs.parent / _cell(row, c) for c in PAIR_COLUMNS[:3]}
            names = {c: _cell(row, c) or None for c in NAME_COLUMNS}
            key = made_by_key(model_sha, size, list(paths.values()), list(names.values()))
            if dest.exists():
                found = made_by_of(dest)
                if found == key:
                    result.kept += 1
                    continue
                if found is None:
                    raise DataError(f"{dest} exists and was not written by `cocosnet generate`; move it away or "
                                    "choose another `out`")
            generated = generate_one(model, cfg, paths["exemplar"], paths["exemplar_pose"], paths["pose"], size=size,
                                     device=device, exemplar_pose_name=names["exemplar_pose_name"],
                                     pose_name=names["pose_name"])
            existed = dest.exists()
            save_image(generated.image, dest, made_by=key)
            result.replaced += existed
            result.made += not existed
        except (CocosnetError, OSError, ValueError) as exc:
            result.failures.append(f"{pairs}:{lineno}: {exc}")
    return result
