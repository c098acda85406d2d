"""OpenPose keypoints -> the official CoCosNet v2 20-channel pose label.

The label is built exactly as the official DeepFashion-HD loader builds it
(`DeepFashionHDDataset.get_label_tensor` in the official code), bit for bit on the 1024 canvas:
18 joint discs, then 17 limb ellipses alpha-blended 0.4/0.6, converted
BGR->RGB (so the palette's (255, 0, 0) comes out blue), plus one L1
distance map per limb, divided by 3, clipped and truncated to uint8.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cocosnet.errors import DataError
from cocosnet.limits import read_text

NUM_JOINTS = 18
NUM_LIMBS_DRAWN = 17
LABEL_CHANNELS = 3 + NUM_LIMBS_DRAWN
OFFICIAL_CANVAS = 1024
OFFICIAL_RADIUS = 20  # disc radius and limb half-width on the 1024 canvas

JOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow",
    "l_wrist", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)

# OpenPose limb list, 0-based. The official code draws only the first 17;
# the two ear-shoulder links are listed for completeness and never drawn.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
    (2, 16), (5, 17),
)

# The OpenPose palette as listed; OpenCV draws it as BGR.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# OpenCV's fixed-point drawing overflows far outside the canvas; joints
# further out than this many canvases are treated as missing.
_MAX_OFFSET_CANVASES = 8


class PoseFileError(DataError):
    """A keypoint file that cannot be read; the message names file and problem."""


def _read_table(path: Path, min_cols: int, what: str) -> np.ndarray:
    """Parse a whitespace-separated numeric table, with errors that name the line."""
    try:
        text = read_text(path, f"{what} file")
    except FileNotFoundError:
        raise PoseFileError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise PoseFileError(f"{path}: cannot read {what} file ({exc.strerror or exc})") from None
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise PoseFileError(
                f"{path}:{lineno}: non-numeric content {line.strip()[:60]!r}") from None
        if len(values) < min_cols:
            raise PoseFileError(
                f"{path}:{lineno}: {what} row has {len(values)} columns, expected at least {min_cols}")
        if rows and len(values) != len(rows[0]):
            raise PoseFileError(
                f"{path}:{lineno}: {what} row has {len(values)} columns but line 1 has "
                f"{len(rows[0])} (truncated file?)")
        rows.append(values)
    if not rows:
        raise PoseFileError(f"{path}: empty {what} file")
    return np.asarray(rows, dtype=np.float64)


def read_openpose(candidate_path: str | Path, subset_path: str | Path) -> np.ndarray:
    """Read an OpenPose `*_candidate.txt` / `*_subset.txt` pair.

    Returns an (18, 2) float64 array of (x, y) in COCO-18 order, NaN where a
    joint is missing. When the subset holds several people, the one with the
    highest total score (column 18) is taken.
    """
    candidate_path, subset_path = Path(candidate_path), Path(subset_path)
    candidate = _read_table(candidate_path, 2, "candidate")
    subset = _read_table(subset_path, NUM_JOINTS, "subset")
    if subset.shape[0] > 1:
        if subset.shape[1] <= NUM_JOINTS:
            raise PoseFileError(
                f"{subset_path}: {subset.shape[0]} people but no total-score column 18 to choose by")
        person = subset[int(np.argmax(subset[:, NUM_JOINTS]))]
    else:
        person = subset[0]
    keypoints = np.full((NUM_JOINTS, 2), np.nan, dtype=np.float64)
    for joint, raw in enumerate(person[:NUM_JOINTS]):
        if not np.isfinite(raw) or raw != int(raw):
            raise PoseFileError(f"{subset_path}: joint {joint} index {raw} is not an integer")
        if raw < 0:
            continue
        index = int(raw)
        if index >= candidate.shape[0]:
            raise PoseFileError(
                f"{subset_path}: joint {joint} ({JOINT_NAMES[joint]}) points at candidate row "
                f"{index}, but {candidate_path} has only {candidate.shape[0]} rows")
        keypoints[joint] = candidate[index, :2]
    return keypoints


def write_openpose(keypoints: np.ndarray, candidate_path: str | Path, subset_path: str | Path,
                   scores: np.ndarray | None = None) -> None:
    """Write keypoints in the pytorch-openpose text format (one person).

    candidate rows are (x, y, score, peak id); the subset row holds 18
    candidate indices (-1 when missing), the total score and the part count.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    present = np.flatnonzero(np.isfinite(keypoints).all(axis=1))
    if scores is None:
        scores = np.ones(NUM_JOINTS)
    candidate = np.zeros((len(present), 4))
    subset = np.full(NUM_JOINTS + 2, -1.0)
    for row, joint in enumerate(present):
        candidate[row] = (*keypoints[joint], scores[joint], row)
        subset[joint] = row
    subset[NUM_JOINTS] = float(scores[present].sum()) + len(present)
    subset[NUM_JOINTS + 1] = len(present)
    fmt = "%.18e"
    np.savetxt(candidate_path, candidate.reshape(-1, 4), fmt=fmt)
    np.savetxt(subset_path, subset[None], fmt=fmt)


def drawn_joints(keypoints: np.ndarray, canvas_size: int = OFFICIAL_CANVAS) -> np.ndarray:
    """(18,) bool: the joints whose disc lands on the canvas (keypoints in its frame), those a label shows."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    radius = max(1, round(OFFICIAL_RADIUS * canvas_size / OFFICIAL_CANVAS))
    with np.errstate(invalid="ignore"):
        inside = (keypoints > -radius) & (keypoints < canvas_size + radius)
    return np.isfinite(keypoints).all(axis=1) & inside.all(axis=1)


def _usable(point: np.ndarray, canvas_size: int) -> bool:
    limit = _MAX_OFFSET_CANVASES * canvas_size
    return bool(np.isfinite(point).all() and np.all(np.abs(point) < limit))


def _render_planes(keypoints: np.ndarray, canvas_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The official drawing: RGB stick figure (S, S, 3) and distance maps (17, S, S), uint8."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (NUM_JOINTS, 2):
        raise ValueError(f"keypoints must have shape (18, 2), got {keypoints.shape}")
    radius = max(1, round(OFFICIAL_RADIUS * canvas_size / OFFICIAL_CANVAS))
    present = [_usable(p, canvas_size) for p in keypoints]

    canvas = np.zeros((canvas_size, canvas_size, 3), dtype=np.uint8)
    for joint in range(NUM_JOINTS):
        if present[joint]:
            x, y = keypoints[joint]
            cv2.circle(canvas, (int(x), int(y)), radius, COLORS[joint], thickness=-1)

    dist_maps = np.full((NUM_LIMBS_DRAWN, canvas_size, canvas_size), 255, dtype=np.uint8)
    inverted = np.empty((canvas_size, canvas_size), dtype=np.uint8)  # 0 on the limb
    for limb in range(NUM_LIMBS_DRAWN):
        a, b = LIMBS[limb]
        if not (present[a] and present[b]):
            continue  # the transform of an empty mask is ~3.4e38, which clips to 255
        (x0, y0), (x1, y1) = keypoints[a], keypoints[b]
        length = ((y0 - y1) ** 2 + (x0 - x1) ** 2) ** 0.5  # the official formula, not hypot
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly((int((x0 + x1) / 2), int((y0 + y1) / 2)),
                                   (int(length / 2), radius), int(angle), 0, 360, 1)
        inverted[:] = 255
        cv2.fillConvexPoly(inverted, polygon, 0)
        if cv2.countNonZero(inverted) == inverted.size:
            continue  # the limb lies off the canvas: distances ~3.4e38, clipped to 255
        # Blend only around the limb: outside it the official whole-canvas blend maps c to
        # round(0.4 c + 0.6 c) = c, and the limb's pixels are the ones the mask holds.
        x, y, w, h = cv2.boundingRect(polygon)
        rows = slice(max(y - 1, 0), min(y + h + 1, canvas_size))
        cols = slice(max(x - 1, 0), min(x + w + 1, canvas_size))
        limb_canvas = canvas[rows, cols].copy()
        limb_canvas[inverted[rows, cols] == 0] = COLORS[limb]
        canvas[rows, cols] = cv2.addWeighted(canvas[rows, cols], 0.4, limb_canvas, 0.6, 0)
        dist = cv2.distanceTransform(inverted, cv2.DIST_L1, 3)
        # The L1 transform is integer-valued (at most 2046 here), so the official
        # clip(dist / 3).astype(uint8) is floor(min(dist, 765) / 3) = round(|dist / 3 - 1/3|),
        # saturated: one OpenCV pass.
        cv2.convertScaleAbs(dist, dst=dist_maps[limb], alpha=1 / 3, beta=-1 / 3)
    return canvas[..., ::-1], dist_maps  # BGR -> RGB


def render_pose_label(keypoints: np.ndarray, canvas_size: int = OFFICIAL_CANVAS) -> np.ndarray:
    """Render the official 20-channel pose label.

    keypoints: (18, 2) (x, y) in pixels of the canvas frame, NaN = missing.
    Returns uint8 (canvas_size, canvas_size, 20): channels 0-2 the RGB stick
    figure, 3-19 the 17 limb distance maps (0 on the limb, 255 = far/missing).
    The disc radius and stick width are 20 px at 1024 and scale with the canvas.
    """
    rgb, dist_maps = _render_planes(keypoints, canvas_size)
    return np.concatenate([rgb, dist_maps.transpose(1, 2, 0)], axis=2)


def render_label_resized(keypoints: np.ndarray, size: int | tuple[int, int], *,
                         canvas_size: int = OFFICIAL_CANVAS) -> np.ndarray:
    """`resize_label(render_pose_label(keypoints, canvas_size), size)`, without the full-size interleaving."""
    rgb, dist_maps = _render_planes(keypoints, canvas_size)
    height, width = (size, size) if isinstance(size, int) else size
    out = np.empty((height, width, LABEL_CHANNELS), dtype=np.uint8)
    out[..., :3] = _resize(np.ascontiguousarray(rgb), (width, height), Image.Resampling.NEAREST)
    for c, plane in enumerate(dist_maps, start=3):
        out[..., c] = _resize(plane, (width, height), Image.Resampling.BILINEAR)
    return out


def _resize(channel: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(channel).resize(size, resample))


def label_to_input(label: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (S, S, 20) label to the working size, as the official loader does.

    Pillow NEAREST for the RGB stick figure, Pillow BILINEAR (antialiased) for
    each distance map. `size` is an int or (height, width).
    Returns float32 (20, height, width) in [0, 1].
    """
    resized = resize_label(label, size)
    return resized.transpose(2, 0, 1).astype(np.float32) / 255.0


def resize_label(label: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (S, S, 20) -> uint8 (height, width, 20) with the official resampling."""
    if label.ndim != 3 or label.shape[2] != LABEL_CHANNELS or label.dtype != np.uint8:
        raise ValueError(f"label must be uint8 (H, W, {LABEL_CHANNELS}), got {label.dtype} {label.shape}")
    height, width = (size, size) if isinstance(size, int) else size
    pil_size = (width, height)
    out = np.empty((height, width, LABEL_CHANNELS), dtype=np.uint8)
    out[..., :3] = _resize(np.ascontiguousarray(label[..., :3]), pil_size, Image.Resampling.NEAREST)
    for c in range(3, LABEL_CHANNELS):
        out[..., c] = _resize(np.ascontiguousarray(label[..., c]), pil_size, Image.Resampling.BILINEAR)
    return out
