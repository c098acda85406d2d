"""Sample grids: exemplar | pose | warp at each level | output | ground truth, one row per sample."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch import Tensor

from cocosnet.models.blocks import resize_to


def to_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def sample_grid(batch: dict, warps: list[Tensor], output: Tensor | None, *, rows: int = 4) -> Image.Image:
    size = tuple(batch["image"].shape[-2:])
    columns = []
    n = min(rows, batch["image"].shape[0])
    for i in range(n):
        tiles = [batch["exemplar"][i], batch["label"][i, :3] * 2 - 1]
        tiles += [resize_to(w[i:i + 1].float(), size, "nearest")[0] for w in warps]
        if output is not None:
            tiles.append(output[i])
        tiles.append(batch["image"][i])
        columns.append(np.concatenate([to_uint8(t.cpu()) for t in tiles], axis=1))
    return Image.fromarray(np.concatenate(columns, axis=0))


