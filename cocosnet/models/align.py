"""Domain-alignment U-Net: label (20 ch) or exemplar (3 + 20 ch) -> features at 1/8, 1/4, 1/2, 1/1.

Widths (coarse to fine) default to the official 128/128/64/32; the encoder
widths follow from them as in the official network (32, 64, 128, 128, 128).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models.blocks import ResidualBlock, SPADEResBlock, centre_and_normalise, sn_in_conv


class AlignUNet(nn.Module):
    def __init__(self, in_nc: int, widths: tuple[int, ...] = (128, 128, 64, 32), *,
                 match_channels: int = 32, spade_hidden: int = 128):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"align widths must list 4 levels (coarse to fine), got {widths}")
        w0, w1, w2, w3 = widths
        enc = (w3, w2, w1, w0, w0)  # L1 .. L5
        strides = (1, 1, 2, 2, 2)
        self.encoder = nn.ModuleList()
        fin = in_nc
        for i, (fout, stride) in enumerate(zip(enc, strides)):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2)] if i else []
            layers.append(sn_in_conv(fin, fout, 3, stride))
            if i:
                layers.append(ResidualBlock(fout))
            self.encoder.append(nn.Sequential(*layers))
            fin = fout
        # Decoder: head on L5, then up + skip (L4, L3, L2), each a SPADE block on the input.
        self.decoder = nn.ModuleList([SPADEResBlock(w0, w0, in_nc, spade_hidden=spade_hidden),
                                      SPADEResBlock(w0, w1, in_nc, spade_hidden=spade_hidden),
                                      SPADEResBlock(w1, w2, in_nc, spade_hidden=spade_hidden),
                                      SPADEResBlock(w2, w3, in_nc, spade_hidden=spade_hidden)])
        self.project = nn.ModuleList([nn.Conv2d(w, match_channels, 1) for w in widths])

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """x (B, in_nc, H, W) with H, W divisible by 8.

        Returns (features, matching): features[l] (B, widths[l], H/2^(3-l), W/2^(3-l)),
        L2-normalised over channels (for the alignment loss); matching[l] the
        1x1 projection to match_channels with PONO_C centring, L2-normalised.
        """
        skips = []
        h = x
        for layer in self.encoder:
            h = layer(h)
            skips.append(h)
        l2, l3, l4, l5 = skips[1:]
        feats = [self.decoder[0](l5, x)]
        for block, skip in zip(self.decoder[1:], (l4, l3, l2)):
            up = F.interpolate(feats[-1], size=skip.shape[-2:], mode="bilinear", align_corners=True)
            feats.append(block(up + skip, x))
        feats = [F.normalize(f, dim=1) for f in feats]
        matching = [centre_and_normalise(proj(f)) for proj, f in zip(self.project, feats)]
        return feats, matching
