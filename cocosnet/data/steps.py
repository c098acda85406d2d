"""The first data stages' work (stages/prepare.py, render_keypoints.py), each from a config: the listed
images prepared, and their labels rendered."""

from __future__ import annotations

from pathlib import Path

from cocosnet.config import Config
from cocosnet.data.layouts import listed_images
from cocosnet.data.processing import prepare_images, render_labels
from cocosnet.data.sources import layout_for


def prepare(cfg: Config) -> str:
    """Pad (232) and resize every listed image to data.load_size, under <processed>/img."""
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "img"
    manifest = prepare_images(listed_images(layout_for(cfg.data.source), root), root, out, cfg.data.load_size,
                              workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample)
    return f"prepare: {len(manifest.ok)} images -> {out} ({len(manifest.skipped)} skipped)"


def render_keypoints(cfg: Config) -> str:
    """The 20-channel label of every listed image's keypoints, cached at data.load_size under <processed>/label."""
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "label"
    manifest = render_labels(listed_images(layout_for(cfg.data.source), root), root, out, cfg.data.load_size,
                             workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample, source=cfg.data.source)
    return f"render_keypoints: {len(manifest.ok)} labels -> {out} ({len(manifest.skipped)} skipped)"
