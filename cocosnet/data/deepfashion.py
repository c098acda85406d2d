"""DeepFashion-HD on disk: layout, split and pair lists, and the official preprocessing.

Layout (relative to the data root)::

    img/<MEN|WOMEN>/<Category>/id_XXXXXXXX/NN_V_view.jpg
    pose/<MEN|WOMEN>/<Category>/id_XXXXXXXX/NN_V_view_{candidate,subset}.txt
    train.txt  val.txt  deepfashion_ref.txt  deepfashion_ref_test.txt  deepfashion_self_pair.txt

Preprocessing follows `data/preprocess.py` of the official code: pad the
750x1101 photo horizontally with the value 232 (175 px left, 176 px right) to
a 1101x1101 square; the keypoint files live in the 1024x1024 frame of that
square. Other sizes are handled by the same rule, generalised: the short side
is padded symmetrically (the odd pixel on the right or bottom) to a square,
and keypoints are expected in the 1024 frame of that square. The official
code then resizes twice (skimage to 1024, Pillow bicubic to the load size);
we resample once, from the padded square straight to the load size, with
Pillow bicubic, which avoids a second interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from cocosnet.errors import DataError
from cocosnet.limits import open_image, read_bounded

PAD_VALUE = 232
KEYPOINT_FRAME = 1024
PAIR_LISTS = ("deepfashion_ref.txt", "deepfashion_ref_test.txt", "deepfashion_self_pair.txt")


def normalise_relpath(raw: str, where: str) -> str:
    """Turn a list entry into a clean relative POSIX path, or raise naming `where`.

    `\\` separators (as in the published lists) become `/`. Absolute paths,
    drive letters and `..` components are refused.
    """
    text = raw.strip().replace("\\", "/")
    if not text:
        raise DataError(f"{where}: empty path")
    path = PurePosixPath(text)
    if path.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise DataError(f"{where}: absolute path {raw.strip()!r} refused; paths must be relative to the data root")
    if ".." in path.parts:
        raise DataError(f"{where}: path {raw.strip()!r} contains '..'; paths must stay inside the data root")
    return str(path)


def read_list_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a list file with their 1-based line numbers.

    CRLF line endings (the published lists come from Windows) are accepted.
    """
    try:
        raw = read_bounded(path, "list file")
    except FileNotFoundError:
        raise DataError(f"{path}: list file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the list file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: the paths it names, and where it came from."""

    paths: tuple[str, ...]
    source: str  # "file:line"


def read_split_list(path: Path) -> list[ListEntry]:
    """`train.txt` / `val.txt`: one relative image path per line."""
    entries = []
    for lineno, line in read_list_lines(path):
        where = f"{path}:{lineno}"
        if "," in line:
            raise DataError(f"{where}: expected one image path per line, got {line[:80]!r}")
        entries.append(ListEntry((normalise_relpath(line, where),), where))
    return entries


def read_pair_list(path: Path) -> list[ListEntry]:
    """Official pair lists: `target, exemplar[, exemplar ...]`, comma-separated."""
    entries = []
    for lineno, line in read_list_lines(path):
        where = f"{path}:{lineno}"
        fields = [f for f in line.split(",") if f.strip()]
        if len(fields) < 2:
            raise DataError(f"{where}: expected 'target, exemplar[, ...]', got {line[:80]!r}")
        entries.append(ListEntry(tuple(normalise_relpath(f, where) for f in fields), where))
    return entries


def identity_of(relpath: str) -> str:
    """The clothing identity of an image: its `.../id_XXXXXXXX` directory."""
    return str(PurePosixPath(relpath).parent)


def pose_paths(root: Path, image_rel: str) -> tuple[Path, Path]:
    """`img/.../x.jpg` -> (`pose/.../x_candidate.txt`, `pose/.../x_subset.txt`)."""
    rel = PurePosixPath(image_rel)
    if rel.parts[0] != "img":
        raise DataError(f"{image_rel}: image paths must start with 'img/'")
    stem = PurePosixPath("pose", *rel.parts[1:]).with_suffix("")
    return (root / f"{stem}_candidate.txt", root / f"{stem}_subset.txt")


def load_image(path: Path) -> np.ndarray:
    """Read a photo as uint8 RGB (H, W, 3), turned upright by its EXIF orientation (as OpenPose and other
    OpenCV-based detectors read it, so its keypoints match). A corrupt or truncated file, or one over the
    size caps (`cocosnet.limits`, checked from the header before decoding), raises DataError."""
    try:
        with open_image(path) as opened:
            opened.load()
            im = ImageOps.exif_transpose(opened)
            if im.mode not in ("RGB", "L", "RGBA", "P", "CMYK", "YCbCr"):
                raise DataError(f"{path}: unsupported image mode {im.mode}")
            if im.mode == "RGBA":
                flat = Image.new("RGB", im.size, (PAD_VALUE,) * 3)
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def photo_size(path: Path) -> tuple[int, int]:
    """(width, height) of a photo as `load_image` returns it (upright by its EXIF orientation), from its header."""
    try:
        with open_image(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # the orientations that swap the sides
                width, height = height, width
            return width, height
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


@dataclass(frozen=True)
class SquareFrame:
    """Maps a (width x height) photo into the padded square and its resized frames."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) padding; the odd pixel goes right/bottom (175/176 for 750x1101)."""
        return (self.side - self.width) // 2, (self.side - self.height) // 2

    def to_frame(self, xy: np.ndarray, size: int = KEYPOINT_FRAME) -> np.ndarray:
        """Photo pixel coordinates -> pixels of the padded square resized to `size`."""
        left, top = self.offset
        scale = size / self.side
        return (np.asarray(xy, dtype=np.float64) + (left + 0.5, top + 0.5)) * scale - 0.5

    def from_frame(self, xy: np.ndarray, size: int = KEYPOINT_FRAME) -> np.ndarray:
        left, top = self.offset
        scale = size / self.side
        return (np.asarray(xy, dtype=np.float64) + 0.5) / scale - (left + 0.5, top + 0.5)


def pad_to_square(image: np.ndarray, value: int = PAD_VALUE) -> np.ndarray:
    """Pad an (H, W, C) photo to a centred square with a constant value."""
    frame = SquareFrame(image.shape[1], image.shape[0])
    left, top = frame.offset
    out = np.full((frame.side, frame.side) + image.shape[2:], value, dtype=image.dtype)
    out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


def preprocess_image(image: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square with 232 and resize to (size, size) with Pillow bicubic."""
    square = pad_to_square(image)
    if square.shape[0] == size:
        return square
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))
