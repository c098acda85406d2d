"""Caps checked before an input is read: a file of a few kilobytes must not cost gigabytes.

An image's header declares its size, and decoding a 79 KB PNG of 9000x9000 takes 240 MB before the
pad to a square multiplies it; a keypoint file can be /dev/zero or a FIFO. So an image's longest side
and pixel count are checked from its header before it is decoded, and text inputs (keypoint files,
pairs CSVs, lists, params) are read only from regular files up to a byte cap. Each cap has a default
that real data stays far below (DeepFashion-HD photos are 750x1101, a 48 MP phone photo 8064x6048 fits
with `--max-image-pixels`) and an environment variable that raises it; `cocosnet generate` and
`stages.score_folders` also take flags that set those variables.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from PIL import Image

from cocosnet.errors import DataError

MAX_SIDE_ENV, MAX_SIDE = "COCOSNET_MAX_IMAGE_SIDE", 10_000
MAX_PIXELS_ENV, MAX_PIXELS = "COCOSNET_MAX_IMAGE_PIXELS", 40_000_000
MAX_TEXT_ENV, MAX_TEXT_BYTES = "COCOSNET_MAX_TEXT_BYTES", 32 * 2**20


def _cap(env: str, default: int) -> int:
    raw = os.environ.get(env, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"{env}={raw[:40]!r}: expected a positive integer")
    return value


def image_caps() -> tuple[int, int]:
    """(longest side, pixel count) an image may have."""
    return _cap(MAX_SIDE_ENV, MAX_SIDE), _cap(MAX_PIXELS_ENV, MAX_PIXELS)


def check_image_size(path: Path, width: int, height: int) -> None:
    side, pixels = image_caps()
    if max(width, height) > side:
        cap, env, flag = f"{side} px a side", MAX_SIDE_ENV, "--max-image-side"
    elif width * height > pixels:
        cap, env, flag = f"{pixels / 1e6:g} MP", MAX_PIXELS_ENV, "--max-image-pixels"
    else:
        return
    raise DataError(f"{path}: the image is {width}x{height} ({width * height / 1e6:.1f} MP), over the cap of {cap}; "
                    f"raise it with {env} (or {flag}) if the image is what you meant")


def regular_file(path: Path, what: str) -> Path:
    """`path` when it is a regular file (after links); a device, FIFO or folder is a DataError naming it.
    FileNotFoundError passes through."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise DataError(f"{path}: not a regular file; expected a {what}")
    return Path(path)


def open_image(path: Path) -> Image.Image:
    """`Image.open` with its header's size checked against the caps before anything is decoded. Use it as
    a context manager, as `Image.open`. A missing file raises FileNotFoundError; an unreadable one OSError."""
    path = Path(path)
    regular_file(path, "image")
    side, pixels = image_caps()
    # Pillow's own check (an error past twice its limit) stays as a backstop far above ours.
    Image.MAX_IMAGE_PIXELS = max(pixels, side * side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(f"{path}: the image declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:g} MP, over the "
                        f"cap of {pixels / 1e6:g} MP; raise it with {MAX_PIXELS_ENV} (or --max-image-pixels) if the "
                        "image is what you meant") from None
    try:
        check_image_size(path, *im.size)
    except DataError:
        im.close()
        raise
    return im


def read_bounded(path: Path, what: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (default: COCOSNET_MAX_TEXT_BYTES, 32 MiB).
    A device, FIFO or folder is refused without blocking; errors name the file and say what `what` is.
    FileNotFoundError passes through, for the callers' own not-found message."""
    path = Path(path)
    limit = _cap(MAX_TEXT_ENV, MAX_TEXT_BYTES) if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file; expected a {what}")
        if info.st_size > limit:
            raise DataError(f"{path}: {info.st_size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB cap for a {what}; "
                            f"raise it with {MAX_TEXT_ENV} if the file is what you meant")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while read
        raise DataError(f"{path}: over the {limit / 2**20:g} MiB cap for a {what}")
    return data


def read_text(path: Path, what: str, limit: int | None = None) -> str:
    """`read_bounded` decoded as UTF-8 (a BOM is dropped); bad bytes are a DataError naming the file."""
    data = read_bounded(path, what, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); expected a {what}") from None
