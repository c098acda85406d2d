"""A contact sheet of the data: image, pose label, parts, and the GT warp of an exemplar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cocosnet.data.body import NUM_PARTS
from cocosnet.data.deepfashion import load_image, preprocess_image
from cocosnet.data.synthetic import correspondence, load_surface, surface_path, warp_by_correspondence

_PALETTE = (np.random.default_rng(7).uniform(40, 255, size=(NUM_PARTS, 3))).astype(np.uint8)
_PALETTE[0] = 0


def _tile(array: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square with grey and resize, so every column has the same size."""
    return preprocess_image(array, size)


def contact_sheet(table: pd.DataFrame, root: Path, label_of, *, rows: int = 4, size: int = 160) -> Image.Image:
    """Build the sheet for the first `rows` self pairs of `table`.

    label_of(rel) returns the uint8 (S, S, 20) label of an image. Columns:
    target | pose label | distance map (limb 0) | parts | exemplar | exemplar
    warped by the ground truth | target. Without ground truth (DeepFashion)
    the GT columns are left empty.
    """
    picks = table[table["kind"] == "self"].drop_duplicates("target").head(rows)
    titles = ["target", "pose label", "dist. map", "parts (GT)", "exemplar", "GT warp", "target"]
    header = 18
    sheet = Image.new("RGB", (size * len(titles), header + size * len(picks)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * size + 4, 3), title, fill=(0, 0, 0))
    blank = np.full((size, size, 3), 232, np.uint8)
    for r, (_, row) in enumerate(picks.iterrows()):
        target = load_image(root / row["target"])
        exemplar = load_image(root / row["exemplar"])
        label = label_of(row["target"])
        tiles = [_tile(target, size), _tile(label[..., :3], size),
                 _tile(np.repeat(label[..., 3:4], 3, axis=2), size)]
        surf_t, surf_e = surface_path(root, row["target"]), surface_path(root, row["exemplar"])
        if surf_t.exists() and surf_e.exists():
            st, se = load_surface(surf_t), load_surface(surf_e)
            coords, valid = correspondence(st, se)
            warped = warp_by_correspondence(exemplar, coords, valid)
            tiles += [_tile(_PALETTE[st.part], size), _tile(exemplar, size), _tile(warped, size)]
        else:
            tiles += [blank, _tile(exemplar, size), blank]
        tiles.append(_tile(target, size))
        sheet.paste(Image.fromarray(np.concatenate(tiles, axis=1)), (0, header + r * size))
    return sheet
