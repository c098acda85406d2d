"""CoCosNet v2: alignment U-Nets + hierarchical correspondence + SPADE generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cocosnet.config import Config
from cocosnet.data.pose import LABEL_CHANNELS
from cocosnet.models.align import AlignUNet
from cocosnet.models.blocks import resize_to
from cocosnet.models.correspondence import CorrespondenceOutput, HierarchicalCorrespondence
from cocosnet.models.discriminator import MultiscaleDiscriminator
from cocosnet.models.generator import SPADEGenerator
from cocosnet.models.patchmatch import Generators

NUM_LEVELS = 4


@dataclass
class MatchOutput:
    correspondence: CorrespondenceOutput
    label_feats: list[Tensor]  # L2-normalised label-encoder features, coarse to fine
    real_feats: list[Tensor] | None  # image-encoder features of (real target + its label), when given


@dataclass
class CoCosNetOutput(MatchOutput):
    image: Tensor  # (B, 3, H, W) in [-1, 1]


class Matcher(nn.Module):
    """The correspondence network: both alignment U-Nets and the hierarchical matching."""

    def __init__(self, *, label_nc: int, align_widths: tuple[int, ...], match_channels: int,
                 align_spade_hidden: int, num_candidates: int, iters: int, gru_hidden: int, temperature: float):
        super().__init__()
        self.align_label = AlignUNet(label_nc, align_widths, match_channels=match_channels,
                                     spade_hidden=align_spade_hidden)
        self.align_exemplar = AlignUNet(label_nc + 3, align_widths, match_channels=match_channels,
                                        spade_hidden=align_spade_hidden)
        self.correspondence = HierarchicalCorrespondence(NUM_LEVELS, match_channels=match_channels,
                                                         num_candidates=num_candidates, iters=iters,
                                                         gru_hidden=gru_hidden, temperature=temperature)

    def forward(self, label: Tensor, exemplar: Tensor, exemplar_label: Tensor, *, real: Tensor | None = None,
                cycle: bool = False, generator: Generators = None) -> MatchOutput:
        """label, exemplar_label (B, 20, H, W) in [0, 1]; exemplar, real (B, 3, H, W) in [-1, 1].

        H and W must be divisible by 8. `real` (the target photo, for the
        alignment loss) runs the exemplar encoder a second time; `cycle`
        builds the level-0 cycle warp.
        """
        if label.shape[-2] % 8 or label.shape[-1] % 8:
            raise ValueError(f"height and width must be divisible by 8, got {tuple(label.shape[-2:])}")
        label_feats, query = self.align_label(label)
        _, key = self.align_exemplar(torch.cat([exemplar, exemplar_label], dim=1))
        corr = self.correspondence(query, key, exemplar, cycle=cycle, generator=generator)
        real_feats = self.align_exemplar(torch.cat([real, label], dim=1))[0] if real is not None else None
        return MatchOutput(corr, label_feats, real_feats)


class CoCosNet(nn.Module):
    def __init__(self, *, label_nc: int = LABEL_CHANNELS, align_widths: tuple[int, ...] = (128, 128, 64, 32),
                 match_channels: int = 32, align_spade_hidden: int = 128, num_candidates: int = 16,
                 iters: int = 5, gru_hidden: int = 32, temperature: float = 0.01, ngf: int = 64,
                 head_width: int = 512, g_spade_hidden: int = 128):
        super().__init__()
        self.matcher = Matcher(label_nc=label_nc, align_widths=align_widths, match_channels=match_channels,
                               align_spade_hidden=align_spade_hidden, num_candidates=num_candidates, iters=iters,
                               gru_hidden=gru_hidden, temperature=temperature)
        self.generator = SPADEGenerator(3 * NUM_LEVELS + label_nc, ngf=ngf, head_width=head_width,
                                        spade_hidden=g_spade_hidden)

    @classmethod
    def from_config(cls, cfg: Config) -> "CoCosNet":
        m = cfg.model
        return cls(align_widths=m.align.widths, match_channels=m.align.match_channels,
                   align_spade_hidden=m.align.spade_hidden, num_candidates=m.correspondence.num_candidates,
                   iters=m.correspondence.iters, gru_hidden=m.correspondence.gru_hidden,
                   temperature=m.correspondence.temperature, ngf=m.generator.ngf,
                   head_width=m.generator.head_width, g_spade_hidden=m.generator.spade_hidden)

    def forward(self, label: Tensor, exemplar: Tensor, exemplar_label: Tensor, *, real: Tensor | None = None,
                cycle: bool = False, generator: Generators = None) -> CoCosNetOutput:
        """Match (see `Matcher.forward`), then generate from the 4 warps and the label."""
        match = self.matcher(label, exemplar, exemplar_label, real=real, cycle=cycle, generator=generator)
        size = tuple(label.shape[-2:])
        cond = torch.cat([resize_to(w, size, "nearest") for w in match.correspondence.warps] + [label], dim=1)
        return CoCosNetOutput(match.correspondence, match.label_feats, match.real_feats, self.generator(cond))


def build_discriminator(cfg: Config) -> MultiscaleDiscriminator:
    d = cfg.model.discriminator
    return MultiscaleDiscriminator(LABEL_CHANNELS + 3, ndf=d.ndf, n_layers=d.n_layers, num_d=d.num_d)
