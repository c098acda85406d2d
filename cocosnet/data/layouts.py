"""Dataset layouts: how a data root names its images, splits, keypoints, pairs and identities.

The data stages (`prepare`, `render_keypoints`, `build_pairs`) ask a layout these things and nothing
else, so a new benchmark is one class:
  * `lists(root)`: the images each split lists (paths relative to the root, with the list file and
    line that names them), `train` and `val` (the split the evaluate stage scores);
  * `label(root, rel, size)`: the image's 20-channel pose label at size x size, in the frame of the
    image padded to a centred square (the frame `prepare` writes);
  * `pairs(root, split_of, problems, seed)`: pair rows (target, exemplar, kind, split);
  * `identity(rel)`: the clothing identity, which decides `kind` (self or ref);
and, for the data summary, `pair_source(root)`: where the pairs came from.
`data.source` chooses the layout (`cocosnet.data.sources.layout_for`): DeepFashion-HD and the synthetic
set (written in DeepFashion-HD's layout) here, DeepFashion In-shop in `cocosnet.data.inshop`.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from cocosnet.data.deepfashion import PAIR_LISTS, ListEntry, identity_of, pose_paths, read_pair_list, read_split_list
from cocosnet.data.pose import read_openpose, render_label_resized
from cocosnet.errors import DataError

SPLITS = ("train", "val")
Row = tuple[str, str, str, str]  # target, exemplar, kind, split


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


class Layout(Protocol):
    name: str

    def lists(self, root: Path) -> dict[str, list[ListEntry]]: ...

    def label(self, root: Path, rel: str, size: int) -> np.ndarray: ...

    def pairs(self, root: Path, split_of: dict[str, str], problems: Problems, seed: int) -> list[Row]: ...

    def identity(self, rel: str) -> str: ...

    def pair_source(self, root: Path) -> str: ...


def pair_row(identity: Callable[[str], str], target: str, exemplar: str, split: str) -> Row:
    kind = "self" if identity(target) == identity(exemplar) else "ref"
    return (target, exemplar, kind, split)


def listed_images(layout: Layout, root: Path) -> list[str]:
    """Every image the layout's split lists name, once, in list order (files not checked)."""
    return list(dict.fromkeys(e.paths[0] for entries in layout.lists(root).values() for e in entries))


def listed_splits(layout: Layout, root: Path, problems: Problems) -> dict[str, str]:
    """image -> split from the layout's lists; refuses duplicates and missing files."""
    split_of: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for split, listed in layout.lists(root).items():
        for entry in listed:
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
        raise DataError(f"{root}: the split lists name no usable images")
    return split_of


def pairs_by_identity(split_of: dict[str, str], identity: Callable[[str], str], seed: int, *,
                      self_pairs: bool = True) -> list[Row]:
    """Self rows pairing each image with every other view of its identity (when `self_pairs`), and one
    `ref` row per image with a different identity of its split, chosen deterministically from `seed`."""
    by_id: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(split_of):
        by_id[identity(rel)].append(rel)
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        ids = sorted({identity(r) for r, s in split_of.items() if s == split})
        for n, ident in enumerate(ids):
            for target in by_id[ident]:
                if self_pairs:
                    rows += [pair_row(identity, target, ex, split) for ex in by_id[ident] if ex != target]
                if len(ids) > 1:
                    other = ids[(n + 1 + int(rng.integers(len(ids) - 1))) % len(ids)]
                    rows.append(pair_row(identity, target, by_id[other][int(rng.integers(len(by_id[other])))], split))
    return rows


@dataclass(frozen=True)
class DeepFashionHD:
    """`img/.../id_X/NN_V_view.jpg`, OpenPose `pose/..._{candidate,subset}.txt` in the 1024 frame of the
    padded square, `train.txt` / `val.txt`, and the official pair lists (cocosnet/data/deepfashion.py).

    Pairs from the official lists when the root has them, following the official loader
    (`DeepFashionHDDataset`):
      * every target gets one row per entry of its `deepfashion_self_pair.txt` line, in list order, so
        the first row of a target is the official training exemplar;
      * a train target with no self-pair line falls back to the last field of its `deepfashion_ref.txt`
        line, as the official loader does;
      * a val target gets field 1 of its `deepfashion_ref_test.txt` line as its `ref` row.
    Without the lists, pairs come from identity naming (`pairs_by_identity`)."""

    name: str = "deepfashion"

    def lists(self, root: Path) -> dict[str, list[ListEntry]]:
        return {split: read_split_list(root / f"{split}.txt") for split in SPLITS}

    def label(self, root: Path, rel: str, size: int) -> np.ndarray:
        return render_label_resized(read_openpose(*pose_paths(root, rel)), size)

    def identity(self, rel: str) -> str:
        return identity_of(rel)

    def has_lists(self, root: Path) -> bool:
        return all((root / name).is_file() for name in PAIR_LISTS)

    def pair_source(self, root: Path) -> str:
        return "official lists" if self.has_lists(root) else "identity naming"

    def pairs(self, root: Path, split_of: dict[str, str], problems: Problems, seed: int) -> list[Row]:
        if not self.has_lists(root):
            return pairs_by_identity(split_of, self.identity, seed)
        ref_train, ref_test, self_pairs = (self._checked(read_pair_list(root / name), root, problems)
                                           for name in PAIR_LISTS)
        rows = []
        for target, split in split_of.items():
            if target in self_pairs:
                rows += [pair_row(self.identity, target, ex, split) for ex in self_pairs[target][0]]
            elif split == "train" and target in ref_train:
                rows.append(pair_row(self.identity, target, ref_train[target][0][-1], split))
            if split == "val" and target in ref_test:
                rows.append(pair_row(self.identity, target, ref_test[target][0][0], split))
        return rows

    @staticmethod
    def _checked(entries: list[ListEntry], root: Path, problems: Problems) -> dict[str, tuple[list[str], str]]:
        """target -> (exemplars, source) for entries whose files all exist; one line per target."""
        out: dict[str, tuple[list[str], str]] = {}
        for entry in entries:
            missing = [p for p in entry.paths if not (root / p).is_file()]
            if missing:
                problems.report(f"{entry.source}: names a missing file {missing[0]!r}")
                continue
            target, exemplars = entry.paths[0], list(entry.paths[1:])
            if target in out:
                problems.report(f"{entry.source}: duplicate line for target {target!r} (first at {out[target][1]})")
                continue
            out[target] = (exemplars, entry.source)
        return out


DEEPFASHION_HD = DeepFashionHD()
