"""Reading image sets for the set metrics (FID, SWD), with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cocosnet.limits import open_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} is empty: expected {', '.join(sorted(IMAGE_SUFFIXES))} files")
    return files


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; grayscale, RGBA, palette and other modes are refused, not silently converted."""
    try:
        with open_image(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None
    if mode != "RGB":
        raise ValueError(f"{path}: expected an RGB image, got mode {mode!r} "
                         f"({'grayscale' if mode in ('L', 'I', 'F', '1') else 'with alpha' if 'A' in mode else mode}); "
                         "convert the set to RGB first so both sets are scored the same way")
    return arr


def load_image_set(paths: list[Path], size: int = 0) -> np.ndarray:
    """Stack same-sized RGB images into uint8 (N, H, W, 3); size > 0 resizes each to size x size
    (Pillow bicubic) after the same-size check."""
    if not paths:
        raise ValueError("no images given")
    arrays, first = [], None
    for path in paths:
        arr = read_rgb(path)
        if first is None:
            first = arr.shape
        elif arr.shape != first:
            raise ValueError(f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from {paths[0]} "
                             f"({first[1]}x{first[0]}); a set must have one size")
        if size and arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))
        arrays.append(arr)
    return np.stack(arrays)


def chunks(paths: list[Path], size: int = 64):
    """Consecutive slices of a file list, so that large sets are read a chunk at a time."""
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def paired_files(real: str | Path, fake: str | Path) -> tuple[list[Path], list[Path]]:
    """The image files of two folders that pair up by name (same names and count)."""
    real_files, fake_files = list_images(real), list_images(fake)
    real_names, fake_names = [p.name for p in real_files], [p.name for p in fake_files]
    if real_names != fake_names:
        only_real = sorted(set(real_names) - set(fake_names))[:3]
        only_fake = sorted(set(fake_names) - set(real_names))[:3]
        raise ValueError(f"{real} has {len(real_names)} images and {fake} has {len(fake_names)}; they must pair "
                         f"up by name (only in {real}: {only_real}, only in {fake}: {only_fake})")
    return real_files, fake_files


def load_folder_pair(real: str | Path, fake: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Two folders whose files pair up by name, loaded (same names, count and size)."""
    real_files, fake_files = paired_files(real, fake)
    a, b = load_image_set(real_files), load_image_set(fake_files)
    if a.shape != b.shape:
        raise ValueError(f"{real} holds {a.shape[2]}x{a.shape[1]} images but {fake} holds "
                         f"{b.shape[2]}x{b.shape[1]}; the sets must have the same size")
    return a, b
