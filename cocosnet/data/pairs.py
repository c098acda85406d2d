"""Pair tables (pandas): `target, exemplar, kind, split`.

`kind` is `self` when target and exemplar are the same clothing identity (a
paired sample: the target photo is a valid reconstruction target) and `ref`
otherwise. All paths are relative to the data root. Which images and pairs a
root holds, and what an identity is, the dataset's layout says
(`cocosnet.data.layouts`: DeepFashion-HD's official lists or identity naming,
DeepFashion In-shop's pair CSVs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cocosnet.data.layouts import DEEPFASHION_HD, SPLITS, Layout, Problems, listed_splits
from cocosnet.errors import DataError

COLUMNS = ("target", "exemplar", "kind", "split")
__all__ = ["COLUMNS", "SPLITS", "Problems", "build_pairs", "validate_table"]


def build_pairs(root: Path, *, usable: set[str] | None = None, on_bad_sample: str = "error",
                seed: int = 0, layout: Layout = DEEPFASHION_HD) -> tuple[pd.DataFrame, dict]:
    """Build the pair table of a data root in `layout` and a summary of counts (including skipped entries).

    `usable`, when given, is the set of images that passed `prepare` and
    `render_keypoints`; rows naming any other image are dropped and counted.
    """
    root = Path(root)
    problems = Problems(on_bad_sample)
    split_of = listed_splits(layout, root, problems)
    rows = layout.pairs(root, split_of, problems, seed)
    table = pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates(ignore_index=True)
    dropped_unusable = 0
    if usable is not None:
        keep = table["target"].isin(usable) & table["exemplar"].isin(usable)
        dropped_unusable = int((~keep).sum())
        table = table[keep].reset_index(drop=True)
    for col in COLUMNS:
        table[col] = table[col].astype("string")
    if table.empty:
        raise DataError(f"{root}: no usable pairs")
    counts = table.groupby(["split", "kind"]).size()
    summary = {
        "layout": layout.name,
        "source": layout.pair_source(root),
        "images": {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS},
        "identities": {s: len({layout.identity(r) for r, v in split_of.items() if v == s}) for s in SPLITS},
        "pairs": {f"{s}/{k}": int(counts.get((s, k), 0)) for s in SPLITS for k in ("self", "ref")},
        "skipped_list_entries": len(problems.skipped),
        "skipped_list_reasons": problems.skipped,
        "dropped_pairs_with_unusable_images": dropped_unusable,
    }
    return table, summary


def validate_table(table: pd.DataFrame, where: str) -> None:
    """Check a pair table against the contract: columns, values and relative paths."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}")
    bad_kind = ~table["kind"].isin(["self", "ref"])
    if bad_kind.any():
        raise DataError(f"{where}: row {int(np.flatnonzero(bad_kind)[0])}: kind must be 'self' or 'ref'")
    for col in ("target", "exemplar"):
        for i, rel in enumerate(table[col]):
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise DataError(f"{where}: row {i}: {col} {rel!r} must be relative, without '..'")
