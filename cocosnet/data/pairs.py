"""Pair tables (pandas): `target, exemplar, kind, split`.

`kind` is `self` when target and exemplar are the same clothing identity (a
paired sample: the target photo is a valid reconstruction target) and `ref`
otherwise. All paths are relative to the data root.

From the official lists (when the data root has them), following the
official loader (`DeepFashionHDDataset` in the official code, `data/`):
  * every target gets one row per entry of its `deepfashion_self_pair.txt`
    line, in list order, so the first row of a target is the official
    training exemplar;
  * a train target with no self-pair line falls back to the last field of
    its `deepfashion_ref.txt` line, as the official loader does;
  * a val target gets field 1 of its `deepfashion_ref_test.txt` line as its
    `ref` row (the official test exemplar).
Without the lists, pairs come from identity naming: self rows pair each
image with every other view of its identity, and each image gets one `ref`
row with a different identity of its split, chosen deterministically.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cocosnet.data.deepfashion import PAIR_LISTS, ListEntry, identity_of, read_pair_list, read_split_list
from cocosnet.errors import DataError

COLUMNS = ("target", "exemplar", "kind", "split")
SPLITS = ("train", "val")


@dataclass
class Problems:
    """Bad list entries: raised at once under `error`, collected under `skip`."""

    on_bad_sample: str
    skipped: list[str] = field(default_factory=list)

    def report(self, message: str) -> None:
        if self.on_bad_sample != "skip":
            raise DataError(f"{message} (set data.on_bad_sample: skip to skip such entries)")
        warnings.warn(f"build_pairs: skipping: {message}", stacklevel=3)
        self.skipped.append(message)


def read_splits(root: Path, problems: Problems) -> dict[str, str]:
    """image -> split, from train.txt and val.txt; refuses duplicates and missing files."""
    split_of: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for split in SPLITS:
        for entry in read_split_list(root / f"{split}.txt"):
            rel = entry.paths[0]
            if rel in split_of:
                problems.report(f"{entry.source}: duplicate entry {rel!r} (first listed at {first_seen[rel]})")
                continue
            if not (root / rel).is_file():
                problems.report(f"{entry.source}: names a missing file {rel!r}")
                continue
            split_of[rel] = split
            first_seen[rel] = entry.source
    if not split_of:
        raise DataError(f"{root}: train.txt and val.txt name no usable images")
    return split_of


def _checked(entries: list[ListEntry], split_of: dict[str, str], root: Path,
             problems: Problems) -> dict[str, tuple[list[str], str]]:
    """target -> (exemplars, source) for entries whose files all exist; one line per target."""
    out: dict[str, tuple[list[str], str]] = {}
    for entry in entries:
        missing = [p for p in entry.paths if not (root / p).is_file()]
        if missing:
            problems.report(f"{entry.source}: names a missing file {missing[0]!r}")
            continue
        target, exemplars = entry.paths[0], list(entry.paths[1:])
        if target in out:
            problems.report(f"{entry.source}: duplicate line for target {target!r} "
                            f"(first at {out[target][1]})")
            continue
        out[target] = (exemplars, entry.source)
    return out


def _row(target: str, exemplar: str, split: str) -> tuple[str, str, str, str]:
    kind = "self" if identity_of(target) == identity_of(exemplar) else "ref"
    return (target, exemplar, kind, split)


def pairs_from_lists(root: Path, split_of: dict[str, str], problems: Problems) -> list[tuple]:
    ref_train, ref_test, self_pairs = (_checked(read_pair_list(root / name), split_of, root, problems)
                                       for name in PAIR_LISTS)
    rows = []
    for target, split in split_of.items():
        if target in self_pairs:
            rows += [_row(target, ex, split) for ex in self_pairs[target][0]]
        elif split == "train" and target in ref_train:
            rows.append(_row(target, ref_train[target][0][-1], split))
        if split == "val" and target in ref_test:
            rows.append(_row(target, ref_test[target][0][0], split))
    return rows


def pairs_from_identities(split_of: dict[str, str], seed: int) -> list[tuple]:
    by_id: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(split_of):
        by_id[identity_of(rel)].append(rel)
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        ids = sorted({identity_of(r) for r, s in split_of.items() if s == split})
        for n, ident in enumerate(ids):
            for target in by_id[ident]:
                rows += [_row(target, ex, split) for ex in by_id[ident] if ex != target]
                if len(ids) > 1:
                    other = ids[(n + 1 + int(rng.integers(len(ids) - 1))) % len(ids)]
                    rows.append(_row(target, by_id[other][int(rng.integers(len(by_id[other])))], split))
    return rows


def build_pairs(root: Path, *, usable: set[str] | None = None, on_bad_sample: str = "error",
                seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Build the pair table and a summary of counts (including skipped entries).

    `usable`, when given, is the set of images that passed `prepare` and
    `render_keypoints`; rows naming any other image are dropped and counted.
    """
    root = Path(root)
    problems = Problems(on_bad_sample)
    split_of = read_splits(root, problems)
    has_lists = all((root / name).is_file() for name in PAIR_LISTS)
    rows = pairs_from_lists(root, split_of, problems) if has_lists else pairs_from_identities(split_of, seed)
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
        "source": "official lists" if has_lists else "identity naming",
        "images": {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS},
        "identities": {s: len({identity_of(r) for r, v in split_of.items() if v == s}) for s in SPLITS},
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
