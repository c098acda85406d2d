"""Stage `build_pairs`: the pair table, data summary and contact sheet."""

from __future__ import annotations

import io
from pathlib import Path

from cocosnet.data.contact_sheet import contact_sheet
from cocosnet.data.pairs import build_pairs
from cocosnet.data.pose import read_openpose, render_pose_label
from cocosnet.data.deepfashion import pose_paths
from cocosnet.data.processing import MANIFEST, Manifest
from cocosnet.io import atomic_write, atomic_write_json
from stages.common import run_stage


def main(cfg, args) -> None:
    root, processed = Path(cfg.data.root), Path(cfg.data.processed)
    images, labels = (Manifest.read(processed / d / MANIFEST) for d in ("img", "label"))
    table, summary = build_pairs(root, usable=set(images.ok) & set(labels.ok),
                                 on_bad_sample=cfg.data.on_bad_sample, seed=cfg.synthetic.seed)
    summary["skipped_samples"] = {"prepare": images.skipped, "render_keypoints": labels.skipped}
    summary["skipped_count"] = (len(images.skipped) + len(labels.skipped)
                                + summary["skipped_list_entries"])
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(processed / "pairs.parquet", buf.getvalue())
    reports = Path(args.reports)
    atomic_write_json(reports / "summary.json", summary)
    sheet = contact_sheet(table[table["split"] == "val"], root,
                          lambda rel: render_pose_label(read_openpose(*pose_paths(root, rel))))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    atomic_write(reports / "contact_sheet.png", out.getvalue())
    print(f"build_pairs: {len(table)} pairs {summary['pairs']} -> {processed / 'pairs.parquet'}")


def add_args(parser) -> None:
    parser.add_argument("--reports", default="reports/data", help="where summary.json and the contact sheet go")


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
