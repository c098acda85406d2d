"""Stage `render_keypoints`: OpenPose files -> 20-channel labels cached at data.load_size."""

from __future__ import annotations

from pathlib import Path

from cocosnet.data.processing import render_labels
from stages.common import run_stage
from stages.prepare import listed_images


def main(cfg, args) -> None:
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "label"
    manifest = render_labels(listed_images(root), root, out, cfg.data.load_size,
                             workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample)
    print(f"render_keypoints: {len(manifest.ok)} labels -> {out} ({len(manifest.skipped)} skipped)")


if __name__ == "__main__":
    run_stage(__doc__, main)
