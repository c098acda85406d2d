"""`data.source` -> the dataset layout the data stages read (cocosnet/data/layouts.py)."""

from __future__ import annotations

from cocosnet.data.inshop import INSHOP
from cocosnet.data.layouts import DEEPFASHION_HD, Layout

# The synthetic set is written in DeepFashion-HD's layout (or In-shop's: `data.source: inshop` with
# `data.root` at the synthesize stage's output, stages/synthesize.py).
LAYOUTS: dict[str, Layout] = {"deepfashion": DEEPFASHION_HD, "synthetic": DEEPFASHION_HD, "inshop": INSHOP}


def layout_for(source: str) -> Layout:
    try:
        return LAYOUTS[source]
    except KeyError:
        raise ValueError(f"data.source {source!r} has no layout; expected one of {sorted(LAYOUTS)}") from None
