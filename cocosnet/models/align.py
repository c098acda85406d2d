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

from cocosnet.models import memory
from cocosnet.models.blocks import (
    ResidualBlock,
    SPADEResBlock,
    centre_and_normalise,
    conv_with,
    sn_in_conv,
    spectral_weight,
)


class EncoderLayer(nn.Sequential):
    """[LeakyReLU], spectral-norm conv + InstanceNorm, [ResidualBlock]: the first layer has only the conv.
    An nn.Sequential, so its state-dict keys are those the official mapping (models/official.py) expects.

    At full resolution the activation, the conv's input and the norm's input are maps of the
    largest size, so that part is checkpointed; the conv's spectral-norm weight is computed once,
    here, and passed in, so the recomputation is exact (and the power iteration runs once). The
    residual block checkpoints itself."""

    def __init__(self, fin: int, fout: int, stride: int, *, first: bool):
        layers: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2)]
        layers.append(sn_in_conv(fin, fout, 3, stride))
        if not first:
            layers.append(ResidualBlock(fout))
        super().__init__(*layers)
        self.first = first

    def forward(self, x: Tensor) -> Tensor:
        """x (B, fin, H, W) -> (B, fout, H/stride, W/stride)."""
        conv = self[0 if self.first else 1][0]
        weight = spectral_weight(conv)
        out = x.shape[0] * conv.out_channels * -(-x.shape[-2] // conv.stride[0]) * -(-x.shape[-1] // conv.stride[1])
        h = memory.checkpoint(self._conv_part, x, weight, elements=memory.ENCODER_MAPS_KEPT * x.numel() + out)
        return h if self.first else self[2](h)  # the residual block

    def _conv_part(self, x: Tensor, weight: Tensor) -> Tensor:
        """The activation and the SN + IN conv, with the conv's weight given."""
        if not self.first:
            x = self[0](x)
        conv_norm = self[0 if self.first else 1]
        return conv_norm[1](conv_with(conv_norm[0], x, weight))


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
            self.encoder.append(EncoderLayer(fin, fout, stride, first=i == 0))
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
        x = memory.inference_layout(x)
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
        # Large levels are recomputed in backward (exact: no spectral norm or randomness).
        outputs = [memory.checkpoint(_level_outputs, f, proj, elements=memory.OUTPUT_MAPS_KEPT * f.numel())
                   for proj, f in zip(self.project, feats)]
        return [f for f, _ in outputs], [m for _, m in outputs]


def _level_outputs(f: Tensor, project: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """A decoder level's (L2-normalised features, PONO_C-centred and L2-normalised matching projection)."""
    f = F.normalize(f, dim=1)
    return f, centre_and_normalise(project(f))
