"""DeepFashion In-shop as the pose-transfer benchmark distributes it (PATN, GFLA, NTED, PIDM, CFLD), 256x176.

Layout (relative to the data root)::

    train/<name>.jpg  test/<name>.jpg            images, 176 wide x 256 high
    train.lst  test.lst                          one image name per line
    fasion-resize-annotation-{train,test}.csv    `name:keypoints_y:keypoints_x`, then rows
                                                 `name: [y0, ...]: [x0, ...]`: 18 joints in OpenPose COCO
                                                 order, in the image's pixels, -1 missing
    fasion-resize-pairs-{train,test}.csv         `from,to`: from is the exemplar, to the target

(`fasion` is the benchmark's spelling.) The test split is this project's `val` split, the one the evaluate
stage scores. An image's identity is its name up to the last `_`
(`fashionWOMENBlouses_Shirtsid0000637003_1front.jpg` -> `fashionWOMENBlouses_Shirtsid0000637003`), so the
benchmark's pairs are `self` pairs; each val image also gets one `ref` row with another identity, drawn
deterministically, for the CoCosNet protocol's SWD. Labels are the official 20-channel construction drawn on
a canvas of the image's own padded square (256 px for 256x176: discs and sticks of 5 px, not DeepFashion-HD's
1024 canvas), in the frame `prepare` writes (the image padded to a centred square).

`convert_to_inshop` turns a synthetic DeepFashion-HD tree into this layout, so that tests and the demo run
it with no download.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cocosnet.data.deepfashion import KEYPOINT_FRAME, ListEntry, SquareFrame, identity_of, photo_size, pose_paths, read_list_lines
from cocosnet.data.keypoints import read_pose_transfer_csv, write_pose_transfer_csv
from cocosnet.data.layouts import DEEPFASHION_HD, SPLITS, Problems, Row, pair_row, pairs_by_identity
from cocosnet.data.pose import read_openpose, render_label_resized
from cocosnet.errors import DataError
from cocosnet.limits import read_text

FOLDERS = {"train": "train", "val": "test"}  # this project's split -> the benchmark's folder and file suffix


def annotation_file(root: Path, split: str) -> Path:
    return root / f"fasion-resize-annotation-{FOLDERS[split]}.csv"


def pairs_file(root: Path, split: str) -> Path:
    return root / f"fasion-resize-pairs-{FOLDERS[split]}.csv"


def list_file(root: Path, split: str) -> Path:
    return root / f"{FOLDERS[split]}.lst"


@functools.lru_cache(maxsize=4)
def _annotations(path: str, stamp: tuple[int, int]) -> dict[str, np.ndarray]:
    return read_pose_transfer_csv(path)


def annotations(path: Path) -> dict[str, np.ndarray]:
    """The annotation CSV's rows by image name, parsed once per process (and again if the file changes)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    return _annotations(str(path), (st.st_mtime_ns, st.st_size))


def read_pairs_csv(path: Path) -> list[tuple[int, str, str]]:
    """(line number, from, to) of a pairs CSV with a `from,to` header (other columns, such as a leading
    index, are ignored)."""
    try:
        text = read_text(path, "pairs file")
    except FileNotFoundError:
        raise DataError(f"{path}: pairs file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from None
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in next(reader, [])]
    if "from" not in header or "to" not in header:
        raise DataError(f"{path}:1: expected a header with columns `from,to`, got {','.join(header)[:60]!r}")
    i_from, i_to = header.index("from"), header.index("to")
    rows = []
    for fields in reader:
        lineno = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} fields ({','.join(header)}), got "
                            f"{len(fields)}: {','.join(fields)[:80]!r}")
        rows.append((lineno, fields[i_from].strip(), fields[i_to].strip()))
    return rows


def _name(raw: str, where: str) -> str:
    name = raw.strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"{where}: expected an image file name, got {raw.strip()[:80]!r}")
    return name


@dataclass(frozen=True)
class InShop:
    """The In-shop benchmark layout (module docstring)."""

    name: str = "inshop"

    def lists(self, root: Path) -> dict[str, list[ListEntry]]:
        out = {}
        for split in SPLITS:
            path = list_file(root, split)
            out[split] = [ListEntry((f"{FOLDERS[split]}/{_name(line, f'{path}:{n}')}",), f"{path}:{n}")
                          for n, line in read_list_lines(path)]
        return out

    def identity(self, rel: str) -> str:
        return PurePosixPath(rel).name.rsplit("_", 1)[0]

    def pair_source(self, root: Path) -> str:
        return "pose-transfer pair CSVs"

    def keypoints(self, root: Path, rel: str) -> np.ndarray:
        """(18, 2) (x, y) in the image's pixels, NaN for a missing joint."""
        split = next((s for s, folder in FOLDERS.items() if rel.startswith(folder + "/")), None)
        if split is None:
            raise DataError(f"{rel}: In-shop image paths start with train/ or test/")
        path = annotation_file(root, split)
        name = PurePosixPath(rel).name
        rows = annotations(path)
        if name not in rows:
            raise DataError(f"{path}: no row for image {name!r} (listed in {list_file(root, split).name})")
        return rows[name].copy()  # the parsed rows are shared by the process

    def label(self, root: Path, rel: str, size: int) -> np.ndarray:
        frame = SquareFrame(*photo_size(root / rel))
        keypoints = frame.to_frame(self.keypoints(root, rel), frame.side)  # the padded square at the image's scale
        return render_label_resized(keypoints, size, canvas_size=frame.side)

    def pairs(self, root: Path, split_of: dict[str, str], problems: Problems, seed: int) -> list[Row]:
        rows: list[Row] = []
        for split in SPLITS:
            path = pairs_file(root, split)
            for lineno, source, target in read_pairs_csv(path):
                rels = [f"{FOLDERS[split]}/{_name(n, f'{path}:{lineno}')}" for n in (source, target)]
                unknown = [r for r in rels if split_of.get(r) != split]
                if unknown:
                    problems.report(f"{path}:{lineno}: names an image that {list_file(root, split).name} does not "
                                    f"list (or whose file is missing): {PurePosixPath(unknown[0]).name!r}")
                    continue
                rows.append(pair_row(self.identity, rels[1], rels[0], split))
        val = {rel: s for rel, s in split_of.items() if s == "val"}
        return rows + pairs_by_identity(val, self.identity, seed, self_pairs=False)


INSHOP = InShop()


def inshop_name(rel: str) -> str:
    """A DeepFashion-HD path as the In-shop benchmark names the same photo:
    `img/WOMEN/Dresses/id_00000012/02_1_front.jpg` -> `fashionWOMENDressesid0000001202_1front.jpg`."""
    parts = PurePosixPath(rel).parts
    if len(parts) != 5 or parts[0] != "img":
        raise DataError(f"{rel}: expected img/<gender>/<category>/id_XXXXXXXX/NN_V_view.jpg")
    _, gender, category, ident, file = parts
    item, view = file.split("_", 1)
    return f"fashion{gender}{category}{ident.replace('_', '')}{item}_{view.replace('_', '', 1)}"


def convert_to_inshop(root: Path) -> dict[str, str]:
    """Rewrite a synthetic DeepFashion-HD tree under `root` in the In-shop layout, in place: images moved
    to train/ and test/ under their In-shop names, keypoints to the annotation CSVs (the image's pixels),
    every ordered pair of views of an identity to the pair CSVs; the HD lists and pose files removed.
    Returns old path -> new path, for the caller's per-image files (the synthetic ground truth)."""
    moved: dict[str, str] = {}
    for split, entries in DEEPFASHION_HD.lists(root).items():
        keypoints, by_identity = {}, {}
        for entry in entries:
            rel = entry.paths[0]
            name = inshop_name(rel)
            size = photo_size(root / rel)
            kp = SquareFrame(*size).from_frame(read_openpose(*pose_paths(root, rel)), KEYPOINT_FRAME)
            keypoints[name] = kp
            by_identity.setdefault(identity_of(rel), []).append(name)
            new = f"{FOLDERS[split]}/{name}"
            (root / new).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / rel, root / new)
            moved[rel] = new
        write_pose_transfer_csv(keypoints, annotation_file(root, split))
        list_file(root, split).write_text("".join(f"{n}\n" for n in keypoints), encoding="utf-8")
        pairs = [f"{a},{b}" for names in by_identity.values() for a in names for b in names if a != b]
        pairs_file(root, split).write_text("from,to\n" + "".join(f"{p}\n" for p in pairs), encoding="utf-8")
    for folder in ("img", "pose"):
        shutil.rmtree(root / folder, ignore_errors=True)
    for name in ("train.txt", "val.txt", "deepfashion_ref.txt", "deepfashion_ref_test.txt", "deepfashion_self_pair.txt"):
        (root / name).unlink(missing_ok=True)
    return moved
