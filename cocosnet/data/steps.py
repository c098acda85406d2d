"""The first data stages' work (stages/prepare.py, render_keypoints.py), each from a config: the listed
images prepared, and their labels rendered."""

from __future__ import annotations

from pathlib import Path

from cocosnet.config import Config
from cocosnet.data.deepfashion import read_split_list
from cocosnet.data.processing import prepare_images, render_labels


def listed_images(root: Path) -> list[str]:
    """Every image named by train.txt and val.txt, once, in list order."""
    rels = [e.paths[0] for name in ("train.txt", "val.txt") for e in read_split_list(root / name)]
    return list(dict.fromkeys(rels))


def prepare(cfg: Config) -> str:
    """Pad (232) and resize every listed image to data.load_size, under <processed>/img."""
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "img"
    manifest = prepare_images(listed_images(root), root, out, cfg.data.load_size,
                              workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample)
    return f"prepare: {len(manifest.ok)} images -> {out} ({len(manifest.skipped)} skipped)"


def render_keypoints(cfg: Config) -> str:
    """The 20-channel label of every listed image's OpenPose files, cached at data.load_size under <processed>/label."""
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "label"
    manifest = render_labels(listed_images(root), root, out, cfg.data.load_size,
                             workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample)
    return f"render_keypoints: {len(manifest.ok)} labels -> {out} ({len(manifest.skipped)} skipped)"
