"""Domain-alignment U-Net: label (20 ch) or exemplar (3 + 20 ch) -> features at L pyramid levels.

`widths` lists the output width of each level, coarse to fine; with L levels the
coarsest is at 1/2^(L-1). The official network has 4 (128/128/64/32 at 1/8 to
1/1) and encoder widths (32, 64, 128, 128, 128); for L levels the encoder is the
widths reversed plus one more of the coarsest width, which gives exactly that
network for L = 4.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models.blocks import ResidualBlock, SPADEResBlock, centre_and_normalise, sn_in_conv


class AlignUNet(nn.Module):
    def __init__(self, in_nc: int, widths: tuple[int, ...] = (128, 128, 64, 32), *,
                 match_channels: int = 32, spade_hidden: int = 128):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"align widths must list 2 or more levels (coarse to fine), got {widths}")
        self.num_levels = len(widths)
        enc = (*reversed(widths), widths[0])  # L1 .. L(n+1)
        strides = (1, 1) + (2,) * (len(widths) - 1)
        self.encoder = nn.ModuleList()
        fin = in_nc
        for i, (fout, stride) in enumerate(zip(enc, strides)):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2)] if i else []
            layers.append(sn_in_conv(fin, fout, 3, stride))
            if i:
                layers.append(ResidualBlock(fout))
            self.encoder.append(nn.Sequential(*layers))
            fin = fout
        # Decoder: a head on the coarsest encoder output, then up + skip per finer level, each a SPADE block
        # on the input.
        self.decoder = nn.ModuleList(
            [SPADEResBlock(widths[0], widths[0], in_nc, spade_hidden=spade_hidden)]
            + [SPADEResBlock(widths[i - 1], widths[i], in_nc, spade_hidden=spade_hidden)
               for i in range(1, len(widths))])
        self.project = nn.ModuleList([nn.Conv2d(w, match_channels, 1) for w in widths])

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """x (B, in_nc, H, W) with H, W divisible by 2^(L-1).

        Returns (features, matching), coarse to fine: features[l] (B, widths[l],
        H/2^(L-1-l), W/2^(L-1-l)), L2-normalised over channels (for the alignment
        loss); matching[l] the 1x1 projection to match_channels with PONO_C
        centring, L2-normalised.
        """
        skips = []
        h = x
        for layer in self.encoder:
            h = layer(h)
            skips.append(h)
        skips = skips[1:]  # the full-resolution L2 .. the coarsest
        feats = [self.decoder[0](skips[-1], x)]
        for block, skip in zip(self.decoder[1:], reversed(skips[:-1])):
            up = F.interpolate(feats[-1], size=skip.shape[-2:], mode="bilinear", align_corners=True)
            feats.append(block(up + skip, x))
        feats = [F.normalize(f, dim=1) for f in feats]
        matching = [centre_and_normalise(proj(f)) for proj, f in zip(self.project, feats)]
        return feats, matching
