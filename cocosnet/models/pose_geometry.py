"""Pose-geometry matching features: a fixed description of where a pixel sits relative to the skeleton.

The pose label already holds, per limb, the distance of every pixel to that limb
(channels 3.., `cocosnet.data.pose`). exp(-sharpness * distance) over the limbs
is a vector that two pixels at the same place on two bodies share, whatever the
pose, so its cosine similarity ranks matches before any training. Measured on
the demo's val self pairs without training (docs/studies/correspondence.md),
these features alone beat the identity mapping at every level; the learned
features start from random and need hundreds of steps to get there.

`PoseGeometry` appends them, scaled by a learned per-level weight, to the
learned matching features and re-normalises, so that the cosine similarity is
(learned + w^2 * geometry) / (1 + w^2). Not in the official code (weight 0
turns it off and leaves the official matching).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.data.pose import NUM_LIMBS_DRAWN
from cocosnet.models.blocks import is_channels_last, resize_to


def geometry_features(label: Tensor, sizes: list[tuple[int, int]], sharpness: float, *,
                      channels_last: bool = False) -> list[Tensor]:
    """label (B, 3 + limbs, H, W) in [0, 1] -> per size (B, limbs, h, w), area-pooled, L2-normalised;
    stored channels-last with `channels_last` (to join features in that layout without a copy)."""
    limbs = label[:, -NUM_LIMBS_DRAWN:]
    if channels_last:
        limbs = limbs.contiguous(memory_format=torch.channels_last)
    near = torch.exp(-sharpness * limbs)
    return [F.normalize(resize_to(near, size, "area"), dim=1) for size in sizes]


class PoseGeometry(nn.Module):
    def __init__(self, levels: int, *, weight: float, sharpness: float):
        super().__init__()
        self.sharpness = sharpness
        self.log_weight = nn.Parameter(torch.full((levels,), math.log(weight)))

    def forward(self, feats: list[Tensor], label: Tensor) -> list[Tensor]:
        """feats: L2-normalised matching features per level (B, C, h, w), coarse to fine; label (B, 20, H, W)."""
        # Forward-only features arrive channels-last (models/align.py); geometry in the same layout keeps the
        # concatenation, and the search that reads it, free of layout copies.
        geometry = geometry_features(label, [tuple(f.shape[-2:]) for f in feats], self.sharpness,
                                     channels_last=is_channels_last(feats[-1]))
        weights = self.log_weight.exp()
        return [F.normalize(torch.cat([f, w * g.to(f.dtype)], dim=1), dim=1)
                for f, g, w in zip(feats, geometry, weights)]
