"""SPADE generator conditioned on the warped exemplars and the target label.

Official layout at 512: head at 16x16 (1/32), two middle blocks at 1/16, then
up blocks at 1/8 (head width), 1/4 (4 ngf), 1/2 (2 ngf), 1/1 (ngf). Here every
size comes from the input, so any resolution divisible by 8 works.

`warp_skip` (not in the official code; docs/studies/generation.md) lets the output
reuse the finest warp instead of redrawing it:
- `blend`: the last convolution also gives a mask m, and the output is
  m * image + (1 - m) * warp. The mask starts nearly closed (sigmoid(MASK_INIT_LOGIT)).
- `residual`: the output is warp + correction, clamped to [-1, 1]; the last
  convolution starts at zero, so training starts from the warp itself.
Either way the generator starts from its input and learns where to change it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models.blocks import SPADEResBlock, level_sizes, resize_to

MASK_INIT_LOGIT = -2.0  # the blend mask starts at sigmoid(-2) = 0.12
WARP_SKIPS = ("none", "blend", "residual")


class SPADEGenerator(nn.Module):
    def __init__(self, cond_nc: int, *, ngf: int = 64, head_width: int = 512, spade_hidden: int = 128,
                 warp_skip: str = "none"):
        super().__init__()
        self.head_in = nn.Conv2d(cond_nc, head_width, 3, padding=1)
        widths = [head_width, head_width, head_width, head_width, 4 * ngf, 2 * ngf, ngf]
        # (fin, fout) per block: head, middle x2, up_0 .. up_3
        pairs = list(zip([head_width] + widths[:-1], widths))
        self.blocks = nn.ModuleList([SPADEResBlock(fin, fout, cond_nc, spade_hidden=spade_hidden) for fin, fout in pairs])
        if warp_skip not in WARP_SKIPS:
            raise ValueError(f"warp_skip must be one of {WARP_SKIPS}, got {warp_skip!r}")
        self.warp_skip = warp_skip
        self.to_rgb = nn.Conv2d(ngf, 4 if warp_skip == "blend" else 3, 3, padding=1)  # blend: + the mask's logit
        with torch.no_grad():
            if warp_skip == "blend":
                self.to_rgb.bias[3] = MASK_INIT_LOGIT
            elif warp_skip == "residual":
                self.to_rgb.weight.zero_()
                self.to_rgb.bias.zero_()

    def forward(self, cond: Tensor, warp: Tensor | None = None) -> Tensor:
        """cond (B, cond_nc, H, W), with a warp skip the finest warp (B, 3, H, W) -> image (B, 3, H, W) in [-1, 1]."""
        if self.warp_skip != "none" and warp is None:
            raise ValueError(f"a generator with warp_skip {self.warp_skip!r} needs the finest warp")
        sizes = level_sizes(*cond.shape[-2:], 6)  # 1/32 ... 1/1
        # Block i runs at these sizes: head @1/32, middles @1/16, up_0 @1/8 ... up_3 @1/1.
        block_sizes = [sizes[0], sizes[1], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]]
        x = self.head_in(resize_to(cond, sizes[0], "nearest"))
        for block, size in zip(self.blocks, block_sizes):
            x = block(resize_to(x, size, "nearest"), cond)
        x = self.to_rgb(F.leaky_relu(x, 0.2))
        if self.warp_skip == "residual":
            return (warp + x).clamp(-1, 1)
        if self.warp_skip == "blend":
            image, mask = torch.tanh(x[:, :3]), torch.sigmoid(x[:, 3:])
            return warp + mask * (image - warp)
        return torch.tanh(x)
