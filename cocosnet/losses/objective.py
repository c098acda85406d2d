"""The generator and discriminator objectives: dicts of unweighted terms keyed like `loss_weights`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cocosnet.losses.ranking import ranking_loss, truth_flow_loss, truth_ranking_loss
from cocosnet.losses.terms import (
    alignment_loss,
    cycle_loss,
    gan_discriminator_loss,
    gan_feature_loss,
    gan_generator_loss,
    geometry_warp_loss,
    perceptual_loss,
    reconstruction_loss,
    vgg_contextual_loss,
    vgg_feature_matching_loss,
    warp_loss,
)
from cocosnet.models.cocosnet import CoCosNetOutput, MatchOutput


def correspondence_terms(out: MatchOutput, *, real: Tensor, exemplar: Tensor, self_ref: Tensor,
                         rank_temperature: float | None = None, photometric: bool = True,
                         truth: tuple[Tensor, Tensor] | None = None, head_only: bool = False,
                         truth_rank: bool = True, flow: bool = False) -> dict[str, Tensor]:
    """Alignment, warp and cycle terms (the pretraining objective), the geometry warp when it was warped,
    and, given the matcher's temperature, the ranking terms: the photometric one unless `photometric` is
    false, the true-match one when given the truth ((B, S, S, 2) positions, (B, S, S) validity) unless
    `truth_rank` is false. With `head_only` the ranking terms read the scores with their cosines detached,
    so that only the re-ranking head learns from them (`model.correspondence.rank_grad: head`). With `flow`
    and the truth, the GRU's moves at every iteration towards the true match (`flow_truth`)."""
    corr = out.correspondence
    terms = {"warp_self": warp_loss(corr.warps, real, self_ref)}
    scores, features = corr.scores, corr.features
    if head_only and rank_temperature is not None:
        scores = corr.head_scores
        features = None if features is None else [(q.detach(), k.detach()) for q, k in features]
    if rank_temperature is not None and photometric:
        terms["rank"] = ranking_loss(scores, corr.coords, exemplar=exemplar, real=real, self_ref=self_ref,
                                     temperature=rank_temperature)
    if rank_temperature is not None and truth is not None and truth_rank:
        terms["rank_truth"] = truth_ranking_loss(scores, corr.coords, truth=truth[0], valid=truth[1],
                                                 temperature=rank_temperature, features=features)
    if flow and truth is not None and corr.trails is not None:
        terms["flow_truth"] = truth_flow_loss(corr.trails, truth=truth[0], valid=truth[1])
    if out.geometry is not None and out.correspondence.extra_warps is not None:
        terms["warp_geometry"] = geometry_warp_loss(out.correspondence.extra_warps, out.geometry)
    if out.real_feats is not None:
        terms["feat_align"] = alignment_loss(out.label_feats, out.real_feats)
    if out.correspondence.cycle_warp is not None:
        terms["warp_cycle"] = cycle_loss(out.correspondence.cycle_warp, exemplar)
    return terms


def generator_terms(out: CoCosNetOutput, *, label: Tensor, real: Tensor, exemplar: Tensor, self_ref: Tensor,
                    disc: nn.Module, vgg: nn.Module, rank_temperature: float | None = None,
                    photometric: bool = True, truth: tuple[Tensor, Tensor] | None = None,
                    head_only: bool = False, truth_rank: bool = True, flow: bool = False) -> dict[str, Tensor]:
    """Every generator-side term of the paper, unweighted (and the ranking terms as in `correspondence_terms`)."""
    terms = correspondence_terms(out, real=real, exemplar=exemplar, self_ref=self_ref,
                                 rank_temperature=rank_temperature, photometric=photometric, truth=truth,
                                 head_only=head_only, truth_rank=truth_rank, flow=flow)
    fake_d = disc(torch.cat([label, out.image], dim=1))
    with torch.no_grad():
        real_d = disc(torch.cat([label, real], dim=1))
    terms["gan"] = gan_generator_loss(fake_d)
    terms["gan_feat"] = gan_feature_loss(fake_d, real_d)
    fake_vgg = vgg(out.image)
    with torch.no_grad():
        real_vgg, exemplar_vgg = vgg(real.float()), vgg(exemplar.float())
    terms["fm"] = vgg_feature_matching_loss(fake_vgg, real_vgg, self_ref)
    terms["perceptual"] = perceptual_loss(fake_vgg, real_vgg)
    terms["contextual"] = vgg_contextual_loss(fake_vgg, exemplar_vgg)
    terms["recon"] = reconstruction_loss(out.image, real, self_ref)
    return terms


def discriminator_terms(fake: Tensor, *, label: Tensor, real: Tensor, disc: nn.Module) -> dict[str, Tensor]:
    """The hinge D loss on a detached fake; weighted by loss_weights.gan like the official code."""
    fake_d = disc(torch.cat([label, fake.detach()], dim=1))
    real_d = disc(torch.cat([label, real], dim=1))
    return {"gan": gan_discriminator_loss(real_d, fake_d)}
