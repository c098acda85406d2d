"""Multiscale PatchGAN discriminator returning intermediate features for feature matching."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models.blocks import sn_in_conv


class PatchDiscriminator(nn.Module):
    """conv4x4 s2 -> [SN conv + IN] x (n_layers - 1), the last at stride 1 -> conv4x4 -> 1 ch."""

    def __init__(self, in_nc: int, *, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            layers.append(nn.Sequential(sn_in_conv(nf_prev, nf, 4, stride, padding=1), nn.LeakyReLU(0.2)))
        layers.append(nn.Conv2d(nf, 1, 4, 1, 1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Returns the n_layers intermediate features and, last, the patch logits."""
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_nc: int, *, ndf: int = 64, n_layers: int = 4, num_d: int = 2):
        super().__init__()
        self.scales = nn.ModuleList([PatchDiscriminator(in_nc, ndf=ndf, n_layers=n_layers) for _ in range(num_d)])

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        """x (B, label + 3, H, W) -> per scale, [features ..., logits]."""
        out = []
        for i, disc in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(disc(x))
        return out
