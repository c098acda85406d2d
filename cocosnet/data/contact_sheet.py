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


def contact_sheet(table: pd.DataFrame, root: Path, label_of, *, rows: int = 4, size: int = 160) -> Image.Image:
    """Build the sheet for the first `rows` self pairs of `table`.

    label_of(rel) returns the uint8 (S, S, 20) label of an image. Columns:
    target | pose label | distance map (limb 0) | parts | exemplar | exemplar
    warped by the ground truth | target. Without ground truth (DeepFashion)
    the GT columns are left empty.
    """
    # Every tile is padded to a grey square and resized, like the photos themselves.
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
        tiles = [preprocess_image(target, size), preprocess_image(label[..., :3], size),
                 preprocess_image(np.repeat(label[..., 3:4], 3, axis=2), size)]
        surf_t, surf_e = surface_path(root, row["target"]), surface_path(root, row["exemplar"])
        if surf_t.exists() and surf_e.exists():
            st, se = load_surface(surf_t), load_surface(surf_e)
            coords, valid = correspondence(st, se)
            warped = warp_by_correspondence(exemplar, coords, valid)
            tiles += [preprocess_image(_PALETTE[st.part], size), preprocess_image(exemplar, size), preprocess_image(warped, size)]
        else:
            tiles += [blank, preprocess_image(exemplar, size), blank]
        tiles.append(preprocess_image(target, size))
        sheet.paste(Image.fromarray(np.concatenate(tiles, axis=1)), (0, header + r * size))
    return sheet
