"""SPADE generator conditioned on the warped exemplars and the target label.

Official layout at 512: head at 16x16 (1/32), two middle blocks at 1/16, then
up blocks at 1/8 (head width), 1/4 (4 ngf), 1/2 (2 ngf), 1/1 (ngf). Here every
size comes from the input, so any resolution divisible by 8 works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models.blocks import SPADEResBlock, level_sizes, resize_to


class SPADEGenerator(nn.Module):
    def __init__(self, cond_nc: int, *, ngf: int = 64, head_width: int = 512, spade_hidden: int = 128):
        super().__init__()
        self.head_in = nn.Conv2d(cond_nc, head_width, 3, padding=1)
        widths = [head_width, head_width, head_width, head_width, 4 * ngf, 2 * ngf, ngf]
        # (fin, fout) per block: head, middle x2, up_0 .. up_3
        pairs = list(zip([head_width] + widths[:-1], widths))
        self.blocks = nn.ModuleList([SPADEResBlock(fin, fout, cond_nc, spade_hidden=spade_hidden) for fin, fout in pairs])
        self.to_rgb = nn.Conv2d(ngf, 3, 3, padding=1)

    def forward(self, cond: Tensor) -> Tensor:
        """cond (B, cond_nc, H, W) -> image (B, 3, H, W) in [-1, 1]."""
        sizes = level_sizes(*cond.shape[-2:], 6)  # 1/32 ... 1/1
        # Block i runs at these sizes: head @1/32, middles @1/16, up_0 @1/8 ... up_3 @1/1.
        block_sizes = [sizes[0], sizes[1], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]]
        x = self.head_in(resize_to(cond, sizes[0], "nearest"))
        for block, size in zip(self.blocks, block_sizes):
            x = block(resize_to(x, size, "nearest"), cond)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))
