"""The refiner: a shallow network that corrects the generated image from the finest level's candidates.

The finest warp is a softmax over k exemplar positions at temperature 0.01 whose first scores are
nearly tied (0.003 apart on the demo), so it averages several candidates: wrong ones leave speckle,
disagreeing ones blur the cloth. Choosing the best of the k with the target would cut the warp's L1
by 40% (docs/decisions/2026-12-06-candidate-selector.md). The refiner sees every candidate's colour
and score, the target label and the generator's image, and returns that image plus two learned
changes: a re-weighting of the candidates (the matcher's softmax replaced by one with learned logit
offsets, applied as a difference) and an RGB correction. Its last convolution starts at zero, so
before training it returns the generator's image exactly. With `select: hard` the re-weighting keeps one
candidate per pixel, the one the learned weights rank first (straight-through: the softmax's gradient flows
back), so the output is an exemplar pixel rather than an average of several, which blurs the finest scales
(docs/studies/generation.md, section 6); it no longer starts at the generator's image. `dilations` set how
far it looks around a pixel to judge its candidates, and `offsets` also hands it where each candidate points
(docs/decisions/2026-12-07-refiner-reach.md).

It is trained in a stage of its own (`refine`, cocosnet/train/refine.py) on the frozen matcher and
generator, at a batch size the GAN stage cannot afford on a CPU. Not in the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cocosnet.models.blocks import resize_to
from cocosnet.models.ops import weighted_sample

SCORE_SCALE = 10.0  # score gaps (cosines, 0..2) as the network's input, about 0..20
OFFSET_SCALE = 1 / 8  # candidate offsets in output pixels as the network's input: 8 px -> 1


def candidate_colors(source: Tensor, coords: Tensor) -> Tensor:
    """source (B, C, Hk, Wk), coords (B, H, W, k, 2) (x, y) in source pixels -> (B, k, C, H, W): the
    bilinear sample at each candidate, as the warp samples it."""
    b, h, w, k, _ = coords.shape
    flat = weighted_sample(source, coords.reshape(b, h, w * k, 1, 2), coords.new_ones(b, h, w * k, 1))
    return flat.view(b, source.shape[1], h, w, k).permute(0, 4, 1, 2, 3)


class Refiner(nn.Module):
    """Candidates (B, k, 3, H, W), their scores (B, H, W, k), the label (B, label_nc, H, W) and the
    generator's image (B, 3, H, W) -> the refined image (B, 3, H, W), unclamped (the caller clamps)."""

    def __init__(self, num_candidates: int, label_nc: int, *, width: int, temperature: float,
                 select: str = "soft", dilations: tuple[int, ...] = (1, 2, 1), offsets: bool = False):
        super().__init__()
        if select not in ("soft", "hard"):
            raise ValueError(f"select must be 'soft' or 'hard', got {select!r}")
        k = num_candidates
        self.k, self.temperature, self.select, self.offsets = k, temperature, select, offsets
        # in: k colours, k score gaps (with `offsets`, k (dx, dy) too), the label, the image. Each 3x3
        # convolution of dilation d widens the view by 2d: with the first and last, (1, 2, 1) sees 13 px,
        # (1, 2, 4, 8) 35 px (docs/studies/generation.md, section 6)
        inputs = (6 if offsets else 4) * k + label_nc + 3
        layers: list[nn.Module] = [nn.Conv2d(inputs, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for d in dilations:
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, k + 3, 3, padding=1)  # k logit offsets, an RGB correction
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, colors: Tensor, scores: Tensor, label: Tensor, image: Tensor, offsets: Tensor | None = None,
                *, select: str | None = None) -> Tensor:
        """offsets (B, k, 2, H, W): each candidate's (dx, dy) from its pixel in output pixels, read when built
        with `offsets`. `select` overrides the built one for this call (the refine stage's soft warm-up)."""
        b, k, _, h, w = colors.shape
        if k != self.k:
            raise ValueError(f"the refiner was built for {self.k} candidates, got {k}")
        if self.offsets and offsets is None:
            raise ValueError("the refiner was built to read the candidates' offsets, and got none")
        scores = scores.permute(0, 3, 1, 2)  # (B, k, H, W), best first
        gaps = (scores - scores[:, :1]) * SCORE_SCALE
        seen = [colors.reshape(b, 3 * k, h, w), gaps, label, image]
        if self.offsets:  # where each candidate points: neighbours that agree are likelier right
            seen.insert(2, offsets.reshape(b, 2 * k, h, w) * OFFSET_SCALE)
        x = self.out(self.body(torch.cat(seen, dim=1)))
        logits = scores / self.temperature
        weights = (logits + x[:, :k]).softmax(dim=1)  # (B, k, H, W)
        if (select or self.select) == "hard":  # one candidate per pixel forward, the softmax's gradient backward
            one = torch.zeros_like(weights).scatter_(1, weights.argmax(1, keepdim=True), 1.0)
            weights = one + weights - weights.detach()
        change = weights - logits.softmax(dim=1)
        return image + (colors * change.unsqueeze(2)).sum(1) + x[:, k:]


def refiner_inputs(exemplar: Tensor, coords: Tensor, scores: Tensor, size: tuple[int, int]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The finest level's candidate colours, scores and offsets at the output size (B, k, 3, H, W),
    (B, H, W, k), (B, k, 2, H, W): colours sampled from the exemplar at the level's key size, offsets
    (x, y) from the candidate's pixel in output pixels; resized when the level is coarser than the output
    (bilinear colours and offsets, nearest scores)."""
    b, h, w, k, _ = coords.shape
    key = resize_to(exemplar.float(), (h, w), "area")  # the finest level's key is at its query's size
    colors = candidate_colors(key, coords)
    ys, xs = torch.meshgrid(torch.arange(h, device=coords.device), torch.arange(w, device=coords.device), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).to(coords.dtype)  # (H, W, 2), (x, y) like coords
    offsets = (coords - grid[:, :, None]).permute(0, 3, 4, 1, 2)  # (B, k, 2, h, w)
    if (h, w) != tuple(size):
        colors = resize_to(colors.reshape(b, 3 * k, h, w), size, "bilinear").view(b, k, 3, *size)
        scale = offsets.new_tensor([size[1] / w, size[0] / h]).view(1, 1, 2, 1, 1)
        offsets = resize_to(offsets.reshape(b, 2 * k, h, w), size, "bilinear").view(b, k, 2, *size) * scale
        scores = resize_to(scores.permute(0, 3, 1, 2), size, "nearest").permute(0, 2, 3, 1)
    return colors, scores, offsets
