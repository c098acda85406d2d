"""Batch preprocessing: photos -> padded, resized images; keypoints -> cached labels.

Both jobs run over a list of image paths, in parallel, resumably (see
`cocosnet.io.Staging`), with the `data.on_bad_sample` policy: `error` stops
at the first bad sample with a message naming it; `skip` records the sample
and the reason in the manifest and warns, never silently.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from cocosnet.data.deepfashion import load_image, preprocess_image
from cocosnet.data.sources import layout_for
from cocosnet.errors import DataError
from cocosnet.io import Staging, atomic_write, atomic_write_json
from cocosnet.progress import progress

MANIFEST = "manifest.json"


def _strip_img(rel: str) -> Path:
    parts = Path(rel).parts
    return Path(*parts[1:]) if parts and parts[0] == "img" else Path(rel)


def image_file(img_dir: Path, rel: str) -> Path:
    """Where `prepare` writes the image for `img/.../x.jpg`: `<img_dir>/.../x.png`."""
    return Path(img_dir) / _strip_img(rel).with_suffix(".png")


def label_file(label_dir: Path, rel: str) -> Path:
    """Where `render_keypoints` writes its label: `<label_dir>/.../x.npz`."""
    return Path(label_dir) / _strip_img(rel).with_suffix(".npz")


# What a cached file that cannot be read raises: a truncated PNG is an OSError, a truncated npz a BadZipFile.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _unreadable(path: Path, what: str, stage: str, exc: Exception) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: cached {what} not found; rerun `dvc repro {stage}`")
    return DataError(f"{path}: corrupt or truncated cached {what} ({type(exc).__name__}: {exc}); delete it and "
                     f"run `dvc repro --force --single-item {stage}`, then `dvc repro`")


def load_label(path: Path) -> np.ndarray:
    """A cached label: uint8 (load_size, load_size, 20)."""
    try:
        with np.load(path) as z:
            return z["label"]
    except UNREADABLE as exc:
        raise _unreadable(path, "label", "render_keypoints", exc) from None


def load_cached_image(path: Path) -> np.ndarray:
    """A cached image: uint8 (load_size, load_size, 3)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UNREADABLE as exc:
        raise _unreadable(path, "image", "prepare", exc) from None


@dataclass
class Manifest:
    ok: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    @staticmethod
    def read(path: Path) -> Manifest:
        raw = json.loads(Path(path).read_text())
        return Manifest(ok=list(raw["ok"]), skipped=dict(raw["skipped"]))

    def write(self, path: Path) -> None:
        atomic_write_json(path, {"ok": self.ok, "skipped": self.skipped})


def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode_npz(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, label=label)
    return buf.getvalue()


def _prepare_one(rel: str, root: str, out: str, size: int) -> str | None:
    dest = image_file(Path(out), rel)
    if dest.exists():
        return None
    try:
        image = preprocess_image(load_image(Path(root) / rel), size)
    except DataError as exc:
        return str(exc)
    atomic_write(dest, _encode_png(image))
    return None


def _label_one(rel: str, root: str, out: str, size: int, source: str) -> str | None:
    dest = label_file(Path(out), rel)
    if dest.exists():
        return None
    try:
        label = layout_for(source).label(Path(root), rel, size)
    except DataError as exc:
        return str(exc)
    atomic_write(dest, _encode_npz(label))
    return None


def _run(job: Callable[[str], str | None], rels: list[str], *, workers: int, desc: str,
         on_bad_sample: str) -> Manifest:
    workers = workers or os.cpu_count() or 1
    manifest = Manifest()
    if workers > 1 and len(rels) > 1:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(job, rels, chunksize=max(1, min(32, len(rels) // (8 * workers))))
    else:
        pool, results = None, map(job, rels)
    try:
        for rel, problem in progress(zip(rels, results), total=len(rels), desc=desc):
            if problem is None:
                manifest.ok.append(rel)
            elif on_bad_sample == "skip":
                warnings.warn(f"{desc}: skipping bad sample: {problem}", stacklevel=2)
                manifest.skipped[rel] = problem
            else:
                raise DataError(f"{problem} (set data.on_bad_sample: skip to skip such samples)")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return manifest


def _process(job, rels: list[str], root: Path, out: Path, size: int, *, workers: int,
             on_bad_sample: str, desc: str, source: str = "deepfashion") -> Manifest:
    staging = Staging(out, {"root": str(root), "size": size, "job": desc, "source": source})
    bound = partial(job, root=str(root), out=str(staging.path), size=size)
    manifest = _run(bound, rels, workers=workers, desc=desc, on_bad_sample=on_bad_sample)
    manifest.write(staging.path / MANIFEST)
    staging.commit()
    return manifest


def prepare_images(rels: list[str], root: Path, out: Path, size: int, *, workers: int = 1,
                   on_bad_sample: str = "error") -> Manifest:
    """Pad (232) and resize every image to size x size PNG under `out`."""
    return _process(_prepare_one, rels, root, out, size, workers=workers,
                    on_bad_sample=on_bad_sample, desc="prepare")


def render_labels(rels: list[str], root: Path, out: Path, size: int, *, workers: int = 0,
                  on_bad_sample: str = "error", source: str = "deepfashion") -> Manifest:
    """Read each image's keypoints, render its label as the layout of `source` says (DeepFashion-HD: the 1024
    canvas), cache it at size x size."""
    return _process(partial(_label_one, source=source), rels, root, out, size, workers=workers,
                    on_bad_sample=on_bad_sample, desc="render_keypoints", source=source)
