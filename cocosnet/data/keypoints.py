"""Keypoint files from the common pose estimators, as the (18, 2) OpenPose COCO-18 array the label
renderer uses, and the map between a photo's pixels and the padded-square frame of the labels.

`read_keypoints(path, name=None)` recognises the format from the content, not the extension:
  * OpenPose JSON (`people[i].pose_keypoints_2d`, older `pose_keypoints`): BODY_25 (MidHip and the
    feet dropped) or COCO-18; c = 0 is missing; of several people, the highest summed confidence;
  * COCO keypoint JSON: one annotation, a list of them, or a file with `annotations` (`name` selects
    by image file name or id); 17 joints (x, y, v), v = 0 missing; the neck is the shoulders' midpoint;
  * the pose-transfer benchmark annotation CSV (`name:keypoints_y:keypoints_x`, y list first, -1
    missing); `name` selects the row;
  * a DeepFashion-HD `*_candidate.txt` / `*_subset.txt` pair, given either file.
Coordinates stay in the pixel frame the file was written in (x, y), NaN for a missing joint.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from cocosnet.config import short
from cocosnet.data.deepfashion import KEYPOINT_FRAME, SquareFrame
from cocosnet.data.pose import NUM_JOINTS, PoseFileError, read_openpose, render_label_resized
from cocosnet.limits import read_text

BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)  # drops MidHip (8), feet
# COCO-17 index for each of the 18 OpenPose joints; the neck (None) is the shoulders' midpoint.
COCO17_TO_COCO18 = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
POSE_TRANSFER_HEADER = "name:keypoints_y:keypoints_x"
SNAP_DECIMALS = 9  # frame maps round to 1e-9 px: a round trip lands on the same integers


def _numbers(values, path: Path, what: str) -> np.ndarray:
    if not isinstance(values, list):
        raise PoseFileError(f"{path}: {what} must be a list of numbers, got {type(values).__name__}")
    bad = [v for v in values if not _is_number(v)]
    if bad:
        raise PoseFileError(f"{path}: {what} holds a non-numeric value {short(bad[0])}")
    # Non-finite values (JSON NaN / Infinity) are kept: they mark the joint missing.
    return np.asarray([float(v) for v in values], dtype=np.float64)


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        float(value)
    except (ValueError, OverflowError):  # not a number, or an integer past float's range
        return False
    return True


def _triples(flat: np.ndarray, path: Path, what: str, allowed: tuple[int, ...]) -> np.ndarray:
    if flat.size % 3 or flat.size // 3 not in allowed:
        expected = " or ".join(f"{3 * n} ({n} joints x 3)" for n in allowed)
        raise PoseFileError(f"{path}: {what} has {flat.size} values, expected {expected}")
    return flat.reshape(-1, 3)


def _openpose_json(doc: dict, path: Path) -> np.ndarray:
    people = doc.get("people")
    if not isinstance(people, list) or not people:
        raise PoseFileError(f"{path}: OpenPose JSON with no person in `people`")
    best, best_score = None, -math.inf
    for i, person in enumerate(people):
        if not isinstance(person, dict):
            raise PoseFileError(f"{path}: people[{i}] is a {type(person).__name__}, expected an object with "
                                "pose_keypoints_2d")
        key = "pose_keypoints_2d" if "pose_keypoints_2d" in person else "pose_keypoints"
        if key not in person:
            raise PoseFileError(f"{path}: people[{i}] has no pose_keypoints_2d (nor pose_keypoints)")
        joints = _triples(_numbers(person[key], path, f"people[{i}].{key}"), path, f"people[{i}].{key}",
                          (25, 18))
        confidence = np.where(np.isfinite(joints[:, 2]), joints[:, 2], 0.0)  # NaN / inf: no confidence
        score = float(np.clip(confidence, 0, None).sum())
        if best is None or score > best_score:
            best, best_score = np.column_stack([joints[:, :2], confidence]), score
    if best.shape[0] == 25:
        best = best[list(BODY25_TO_COCO18)]
    out = best[:, :2].copy()
    out[(best[:, 2] <= 0) | ~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _coco_annotation(ann: dict, path: Path, where: str) -> np.ndarray:
    joints = _triples(_numbers(ann.get("keypoints"), path, f"{where}keypoints"), path, f"{where}keypoints", (17,))
    xy = joints[:, :2].copy()
    xy[~(joints[:, 2] > 0) | ~np.isfinite(xy).all(axis=1)] = np.nan
    out = np.full((NUM_JOINTS, 2), np.nan)
    for joint, source in enumerate(COCO17_TO_COCO18):
        if source is not None:
            out[joint] = xy[source]
    if np.isfinite(xy[[5, 6]]).all():
        out[1] = xy[[5, 6]].mean(axis=0)
    return out


class AmbiguousPoseFile(PoseFileError):
    """A keypoint file with several entries (COCO annotations, pose-transfer rows) and no name to choose by."""


def _select(items: list, name: str | None, path: Path, what: str, keys) -> int:
    """The index of the one item `name` selects (or the only item)."""
    if name is None:
        if len(items) == 1:
            return 0
        raise AmbiguousPoseFile(f"{path}: holds {len(items)} {what}; choose one by its image name "
                                "(`cocosnet generate --pose-name / --exemplar-pose-name`, or the pairs CSV's "
                                "pose_name / exemplar_pose_name columns)")
    hits = [i for i, item in enumerate(items) if str(name) in keys(item)]
    if not hits:
        raise PoseFileError(f"{path}: no {what[:-1] if what.endswith('s') else what} named {name!r}")
    if len(hits) > 1:
        raise PoseFileError(f"{path}: name {name!r} is ambiguous ({len(hits)} {what} match)")
    return hits[0]


def _coco_json(doc, path: Path, name: str | None) -> np.ndarray:
    if isinstance(doc, dict) and "keypoints" in doc:
        return _coco_annotation(doc, path, "")
    if isinstance(doc, dict):
        anns, images = doc["annotations"], doc.get("images") or []
    else:
        anns, images = doc, []
    if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
        raise PoseFileError(f"{path}: `annotations` must be a list of objects")
    if not isinstance(images, list):
        raise PoseFileError(f"{path}: `images` must be a list of objects")
    files = {str(img.get("id")): str(img.get("file_name", "")) for img in images if isinstance(img, dict)}

    def keys(ann: dict) -> set[str]:
        image_id = ann.get("image_id")
        file = files.get(str(image_id), "")
        return {str(image_id), file, Path(file).name, Path(file).stem} - {"", "None"}

    i = _select(anns, name, path, "annotations", keys)
    return _coco_annotation(anns[i], path, f"annotations[{i}].")


def _pose_transfer_lines(text: str, path: Path) -> list[tuple[int, str, str, str]]:
    """(line number, name, y list text, x list text) of every row after the header."""
    rows = []
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise PoseFileError(f"{path}:{lineno}: expected `name: [y, ...]: [x, ...]`, got {line.strip()[:60]!r}")
        rows.append((lineno, parts[0].strip(), parts[1], parts[2]))
    if not rows:
        raise PoseFileError(f"{path}: no rows after the header")
    return rows


def _pose_transfer_row(path: Path, lineno: int, ys: str, xs: str) -> np.ndarray:
    coords = []
    for label, raw in (("y", ys), ("x", xs)):
        try:
            values = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, an integer of thousands of digits, deep nesting
            raise PoseFileError(f"{path}:{lineno}: the {label} list is not a list of numbers: "
                                f"{raw.strip()[:60]!r}") from None
        values = _numbers(values, Path(f"{path}:{lineno}"), f"the {label} list")
        if values.size != NUM_JOINTS:
            raise PoseFileError(f"{path}:{lineno}: the {label} list has {values.size} joints, expected {NUM_JOINTS}")
        coords.append(values)
    y, x = coords
    out = np.stack([x, y], axis=1)
    out[(x == -1) | (y == -1)] = np.nan
    return out


def _pose_transfer_csv(text: str, path: Path, name: str | None) -> np.ndarray:
    rows = _pose_transfer_lines(text, path)
    i = _select(rows, name, path, "rows", lambda row: {row[1], Path(row[1]).stem})
    lineno, _, ys, xs = rows[i]
    return _pose_transfer_row(path, lineno, ys, xs)


def _read_pose_text(path: Path, what: str) -> str:
    """The text of a keypoint file (size-capped), or PoseFileError naming it."""
    try:
        return read_text(path, what)
    except FileNotFoundError:
        raise PoseFileError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise PoseFileError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_pose_transfer_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Every row of a pose-transfer annotation CSV: image name -> (18, 2) (x, y), NaN for a missing joint.
    A wrong header, a malformed row, a joint count other than 18 or a name listed twice raise
    PoseFileError naming the file and line."""
    path = Path(path)
    text = _read_pose_text(path, "annotation file")
    header = text.lstrip("\ufeff").splitlines()[:1]
    if not header or header[0].replace(" ", "").strip() != POSE_TRANSFER_HEADER:
        raise PoseFileError(f"{path}:1: expected the header {POSE_TRANSFER_HEADER!r}, got "
                            f"{(header[0] if header else '')[:60]!r}")
    out: dict[str, np.ndarray] = {}
    first: dict[str, int] = {}
    for lineno, name, ys, xs in _pose_transfer_lines(text.lstrip("\ufeff"), path):
        if name in out:
            raise PoseFileError(f"{path}:{lineno}: image {name!r} is listed twice (first at line {first[name]})")
        out[name], first[name] = _pose_transfer_row(path, lineno, ys, xs), lineno
    return out


def write_pose_transfer_csv(keypoints: dict[str, np.ndarray], path: str | Path) -> None:
    """Rows `name: [y, ...]: [x, ...]` under the benchmark's header, coordinates rounded to integer pixels
    as the published files hold them, -1 for a missing joint."""
    lines = [POSE_TRANSFER_HEADER]
    for name, kp in keypoints.items():
        kp = np.asarray(kp, dtype=np.float64)
        missing = ~np.isfinite(kp).all(axis=1)
        ys = [-1 if m else int(round(y)) for (_, y), m in zip(kp, missing)]
        xs = [-1 if m else int(round(x)) for (x, _), m in zip(kp, missing)]
        lines.append(f"{name}: {json.dumps(ys)}: {json.dumps(xs)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pair_of(path: Path) -> tuple[Path, Path] | None:
    m = re.fullmatch(r"(.*)_(candidate|subset)\.txt", path.name)
    if not m:
        return None
    return path.with_name(f"{m[1]}_candidate.txt"), path.with_name(f"{m[1]}_subset.txt")


def read_keypoints(path: str | Path, *, name: str | None = None) -> np.ndarray:
    """(18, 2) float64 (x, y) in the file's pixel frame, NaN for a missing joint (formats: module doc)."""
    path = Path(path)
    text = _read_pose_text(path, "keypoint file")
    stripped = text.lstrip()
    if stripped[:1] in "{[":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PoseFileError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise PoseFileError(f"{path}: JSON nested too deeply to be a keypoint file") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise PoseFileError(f"{path}: invalid JSON ({str(exc)[:120]})") from None
        if isinstance(doc, dict) and "people" in doc:
            return _openpose_json(doc, path)
        if (isinstance(doc, dict) and ("keypoints" in doc or "annotations" in doc)) or (
                isinstance(doc, list) and doc and all(isinstance(a, dict) and "keypoints" in a for a in doc)):
            return _coco_json(doc, path, name)
        raise PoseFileError(f"{path}: JSON, but neither OpenPose (`people`) nor COCO keypoints "
                            "(`keypoints` / `annotations`)")
    if stripped.splitlines()[:1] and stripped.splitlines()[0].replace(" ", "") == POSE_TRANSFER_HEADER:
        return _pose_transfer_csv(stripped, path, name)
    pair = _pair_of(path)
    if pair is not None:
        missing = [p for p in pair if not p.is_file()]
        if missing:
            raise PoseFileError(f"{path}: its partner file {missing[0]} is not beside it (DeepFashion-HD keypoints "
                                "are a *_candidate.txt / *_subset.txt pair)")
        return read_openpose(*pair)
    raise PoseFileError(f"{path}: unknown keypoint format; expected OpenPose JSON, COCO keypoint JSON, a "
                        f"pose-transfer annotation CSV (header {POSE_TRANSFER_HEADER!r}) or a DeepFashion-HD "
                        "*_candidate.txt / *_subset.txt pair")


def write_openpose_json(keypoints: np.ndarray, path: str | Path) -> None:
    """One person as OpenPose COCO-18 JSON (c = 1 present, (0, 0, 0) missing); floats keep full precision."""
    flat = []
    for x, y in np.asarray(keypoints, dtype=np.float64):
        flat += [float(x), float(y), 1.0] if math.isfinite(x) and math.isfinite(y) else [0.0, 0.0, 0.0]
    Path(path).write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}]}), encoding="utf-8")


def photo_to_frame(keypoints: np.ndarray, photo_size: tuple[int, int], size: int = KEYPOINT_FRAME) -> np.ndarray:
    """Keypoints in a (width, height) photo's pixels -> the padded-square frame resized to `size` (the
    labels' 1024 frame by default), as `prepare` pads and resizes the photo. Rounded to 1e-9 px, so that
    a photo -> frame -> photo round trip renders the same label (the renderer truncates to integers)."""
    return np.round(SquareFrame(*photo_size).to_frame(keypoints, size), SNAP_DECIMALS)


def frame_to_photo(keypoints: np.ndarray, photo_size: tuple[int, int], size: int = KEYPOINT_FRAME) -> np.ndarray:
    """The inverse of `photo_to_frame`."""
    return np.round(SquareFrame(*photo_size).from_frame(keypoints, size), SNAP_DECIMALS)


def render_keypoints(keypoints: np.ndarray, size: int | tuple[int, int], *,
                     photo_size: tuple[int, int] | None = None) -> np.ndarray:
    """The uint8 (H, W, 20) pose label at `size`. Keypoints are in the labels' padded 1024 frame
    (the DeepFashion-HD files), or, with `photo_size` (width, height), in that photo's pixels."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if photo_size is not None:
        keypoints = photo_to_frame(keypoints, photo_size)
    return render_label_resized(keypoints, size)
