"""Stage `prepare`: pad (232) and resize every listed image to data.load_size."""

from __future__ import annotations

from pathlib import Path

from cocosnet.data.deepfashion import read_split_list
from cocosnet.data.processing import prepare_images
from stages.common import run_stage


def listed_images(root: Path) -> list[str]:
    """Every image named by train.txt and val.txt, once, in list order."""
    rels = [e.paths[0] for name in ("train.txt", "val.txt") for e in read_split_list(root / name)]
    return list(dict.fromkeys(rels))


def main(cfg, args) -> None:
    root, out = Path(cfg.data.root), Path(cfg.data.processed) / "img"
    manifest = prepare_images(listed_images(root), root, out, cfg.data.load_size,
                              workers=cfg.data.workers, on_bad_sample=cfg.data.on_bad_sample)
    print(f"prepare: {len(manifest.ok)} images -> {out} ({len(manifest.skipped)} skipped)")


if __name__ == "__main__":
    run_stage(__doc__, main)
