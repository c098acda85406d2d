"""The build_pairs stage's work (stages/build_pairs.py): the pair table, its summary and the contact sheet."""

from __future__ import annotations

import io
from pathlib import Path

from cocosnet.config import Config
from cocosnet.data.contact_sheet import contact_sheet
from cocosnet.data.pairs import build_pairs
from cocosnet.data.processing import MANIFEST, Manifest
from cocosnet.data.sources import layout_for
from cocosnet.io import atomic_write, atomic_write_json

SHEET_LABEL_SIZE = 1024  # the sheet's label tiles are rendered at this size, then resized like the photos


def pair_table(cfg: Config, reports: Path) -> str:
    """<processed>/pairs.parquet from the usable images and labels, <reports>/summary.json and contact_sheet.png."""
    root, processed = Path(cfg.data.root), Path(cfg.data.processed)
    images, labels = (Manifest.read(processed / d / MANIFEST) for d in ("img", "label"))
    layout = layout_for(cfg.data.source)
    table, summary = build_pairs(root, usable=set(images.ok) & set(labels.ok),
                                 on_bad_sample=cfg.data.on_bad_sample, seed=cfg.synthetic.seed, layout=layout)
    summary["skipped_samples"] = {"prepare": images.skipped, "render_keypoints": labels.skipped}
    summary["skipped_count"] = (len(images.skipped) + len(labels.skipped)
                                + summary["skipped_list_entries"])
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(processed / "pairs.parquet", buf.getvalue())
    atomic_write_json(reports / "summary.json", summary)
    sheet = contact_sheet(table[table["split"] == "val"], root,
                          lambda rel: layout.label(root, rel, SHEET_LABEL_SIZE))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    atomic_write(reports / "contact_sheet.png", out.getvalue())
    return f"build_pairs: {len(table)} pairs {summary['pairs']} -> {processed / 'pairs.parquet'}"
