"""CoCosNet v2: alignment U-Nets + hierarchical correspondence + SPADE generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cocosnet.config import AlignConfig, Config, CorrespondenceConfig, ModelConfig
from cocosnet.data.pose import LABEL_CHANNELS, NUM_LIMBS_DRAWN
from cocosnet.models.align import AlignUNet
from cocosnet.models.blocks import resize_to
from cocosnet.models.correspondence import CorrespondenceOutput, HierarchicalCorrespondence
from cocosnet.models.discriminator import MultiscaleDiscriminator
from cocosnet.models.generator import SPADEGenerator
from cocosnet.models.patchmatch import Generators
from cocosnet.models.pose_geometry import PoseGeometry, geometry_features
from cocosnet.models.refiner import Refiner, refiner_inputs


@dataclass
class MatchOutput:
    correspondence: CorrespondenceOutput
    label_feats: list[Tensor]  # L2-normalised label-encoder features, coarse to fine
    real_feats: list[Tensor] | None  # image-encoder features of (real target + its label), when given
    geometry: list[Tensor] | None  # with geometry_warp: the target's pose geometry per level


@dataclass
class CoCosNetOutput(MatchOutput):
    image: Tensor  # (B, 3, H, W) in [-1, 1]


class Matcher(nn.Module):
    """The correspondence network: both alignment U-Nets and the hierarchical matching."""

    def __init__(self, label_nc: int, align: AlignConfig, correspondence: CorrespondenceConfig):
        super().__init__()
        self.align_label = AlignUNet(label_nc, align.widths, match_channels=align.match_channels,
                                     spade_hidden=align.spade_hidden)
        self.align_exemplar = AlignUNet(label_nc + 3, align.widths, match_channels=align.match_channels,
                                        spade_hidden=align.spade_hidden)
        self.geometry = (PoseGeometry(len(align.widths), weight=correspondence.pose_geometry,
                                      sharpness=correspondence.geometry_sharpness)
                         if correspondence.pose_geometry > 0 else None)
        self.sharpness = correspondence.geometry_sharpness
        channels = align.match_channels + (NUM_LIMBS_DRAWN if self.geometry is not None else 0)
        self.correspondence = HierarchicalCorrespondence(channels, correspondence)
        self.divisor = 2 ** (len(align.widths) - 1)  # the coarsest level is at 1 / divisor

    def forward(self, label: Tensor, exemplar: Tensor, exemplar_label: Tensor, *, real: Tensor | None = None,
                cycle: bool = False, geometry_warp: bool = False, generator: Generators = None) -> MatchOutput:
        """label, exemplar_label (B, 20, H, W) in [0, 1]; exemplar, real (B, 3, H, W) in [-1, 1].

        H and W must be divisible by 2^(levels - 1). `real` (the target photo, for the
        alignment loss) runs the exemplar encoder a second time; `cycle`
        builds the level-0 cycle warp; `geometry_warp` also warps the exemplar's pose
        geometry and returns the target's (for the `warp_geometry` loss).
        """
        if label.shape[-2] % self.divisor or label.shape[-1] % self.divisor:
            raise ValueError(f"height and width must be divisible by {self.divisor}, got {tuple(label.shape[-2:])}")
        label_feats, query = self.align_label(label)
        _, key = self.align_exemplar(torch.cat([exemplar, exemplar_label], dim=1))
        geometry = extra = None
        if geometry_warp:
            sizes = [tuple(q.shape[-2:]) for q in query]
            geometry = geometry_features(label, sizes, self.sharpness)
            extra = geometry_features(exemplar_label, [tuple(k.shape[-2:]) for k in key], self.sharpness)
        if self.geometry is not None:
            query, key = self.geometry(query, label), self.geometry(key, exemplar_label)
        corr = self.correspondence(query, key, exemplar, cycle=cycle, extra=extra, generator=generator)
        real_feats = self.align_exemplar(torch.cat([real, label], dim=1))[0] if real is not None else None
        return MatchOutput(corr, label_feats, real_feats, geometry)


class CoCosNet(nn.Module):
    """The matcher and a SPADE generator conditioned on the warps of every level and the label; optionally
    a refiner of the generated image from the finest level's candidates (`model.refiner.width` > 0)."""

    def __init__(self, cfg: ModelConfig, *, label_nc: int = LABEL_CHANNELS):
        super().__init__()
        self.config = cfg
        self.matcher = Matcher(label_nc, cfg.align, cfg.correspondence)
        g = cfg.generator
        self.generator = SPADEGenerator(3 * len(cfg.align.widths) + label_nc, ngf=g.ngf, head_width=g.head_width,
                                        spade_hidden=g.spade_hidden, warp_skip=g.warp_skip)
        c = cfg.correspondence
        self.refiner = (Refiner(c.num_candidates[-1], label_nc, width=cfg.refiner.width, temperature=c.temperature,
                                select=cfg.refiner.select, dilations=cfg.refiner.dilations,
                                offsets=cfg.refiner.offsets)
                        if cfg.refiner.width > 0 else None)

    @classmethod
    def from_config(cls, cfg: Config) -> CoCosNet:
        return cls(cfg.model)

    def forward(self, label: Tensor, exemplar: Tensor, exemplar_label: Tensor, *, real: Tensor | None = None,
                cycle: bool = False, geometry_warp: bool = False, generator: Generators = None) -> CoCosNetOutput:
        """Match (see `Matcher.forward`), then generate from the warps of every level and the label."""
        match = self.matcher(label, exemplar, exemplar_label, real=real, cycle=cycle, geometry_warp=geometry_warp,
                             generator=generator)
        image = self.generate(match.correspondence.warps, label)
        if self.refiner is not None:
            image = self.refine(match.correspondence, exemplar, label, image).clamp(-1, 1)
        return CoCosNetOutput(match.correspondence, match.label_feats, match.real_feats, match.geometry, image)

    def generate(self, warps: list[Tensor], label: Tensor) -> Tensor:
        """warps per level, coarse to fine, (B, 3, h_l, w_l); label (B, 20, H, W) -> image (B, 3, H, W).
        The condition is every warp nearest-resized to (H, W), then the label, as the official netG; a
        generator with a warp skip also gets the finest warp, resized bilinearly like the `finest_warp` baseline."""
        size = tuple(label.shape[-2:])
        cond = torch.cat([resize_to(w, size, "nearest") for w in warps] + [label], dim=1)
        finest = resize_to(warps[-1], size, "bilinear") if self.generator.warp_skip != "none" else None
        return self.generator(cond, finest)

    def refine(self, corr: CorrespondenceOutput, exemplar: Tensor, label: Tensor, image: Tensor) -> Tensor:
        """The refiner on the generated image (B, 3, H, W), unclamped (its training loss reads it so)."""
        colors, scores, offsets = refiner_inputs(exemplar, corr.coords[-1], corr.scores[-1], tuple(image.shape[-2:]))
        return self.refiner(colors, scores, label, image, offsets)


def build_discriminator(cfg: Config) -> MultiscaleDiscriminator:
    d = cfg.model.discriminator
    return MultiscaleDiscriminator(LABEL_CHANNELS + 3, ndf=d.ndf, n_layers=d.n_layers, num_d=d.num_d)
