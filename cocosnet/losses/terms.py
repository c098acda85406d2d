"""The paper's loss terms as pure functions. Keys equal the `loss_weights` names in params.yaml.

Sample weighting (warp, fm): w_b = self_ref_b / (sum_b self_ref_b + 1e-5), then
a per-sample mean. The official code also divides by the batch through
`mean`, so its effective weights depend on the per-GPU batch;
here they do not.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cocosnet.losses.contextual import contextual_loss
from cocosnet.models.blocks import resize_to

LOSS_KEYS = ("feat_align", "warp_self", "warp_cycle", "warp_geometry", "gan", "gan_feat", "fm", "perceptual",
             "contextual", "recon", "rank", "rank_truth", "flow_truth")
FM_LAYERS = (("relu1_2", 1 / 32), ("relu2_2", 1 / 16), ("relu3_2", 1 / 8), ("relu4_2", 1 / 4), ("relu5_2", 1.0))


def sample_weights(self_ref: Tensor) -> Tensor:
    """(B,) 1 for self pairs, 0 otherwise -> weights summing to ~1 over the self pairs."""
    self_ref = self_ref.float()
    return self_ref / (self_ref.sum() + 1e-5)


def _weighted_l1(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    per_sample = (a - b).abs().flatten(1).mean(dim=1)
    return (per_sample * weights.to(per_sample.dtype)).sum()


def alignment_loss(label_feats: list[Tensor], real_feats: list[Tensor]) -> Tensor:
    """Sum over levels of L1 between label-encoder and image-encoder features of the target."""
    return sum(F.l1_loss(a, b) for a, b in zip(label_feats, real_feats))


def warp_loss(warps: list[Tensor], real: Tensor, self_ref: Tensor) -> Tensor:
    """Sum over levels of the per-sample-weighted L1 between each warp and the pooled target."""
    w = sample_weights(self_ref)
    return sum(_weighted_l1(warp, resize_to(real, warp.shape[-2:], "area"), w) for warp in warps)


def geometry_warp_loss(warped: list[Tensor], target: list[Tensor]) -> Tensor:
    """Sum over levels of L1 between the warped exemplar pose geometry and the target's, over all pairs:
    the geometry depends on the pose only, so unlike the colours it has a true match in every pair."""
    return sum(F.l1_loss(w, t) for w, t in zip(warped, target))


def cycle_loss(cycle_warp: Tensor, exemplar: Tensor) -> Tensor:
    return F.l1_loss(cycle_warp, resize_to(exemplar, cycle_warp.shape[-2:], "area"))


def gan_generator_loss(fake: list[list[Tensor]]) -> Tensor:
    """Hinge: -mean D(fake), averaged over scales."""
    return -sum(scale[-1].mean() for scale in fake) / len(fake)


def gan_discriminator_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Hinge: mean ReLU(1 - D(real)) + mean ReLU(1 + D(fake)), averaged over scales."""
    total = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake))
    return total / len(real)


def gan_feature_loss(fake: list[list[Tensor]], real: list[list[Tensor]]) -> Tensor:
    """Sum over scales and intermediate layers of L1(D_j(fake), D_j(real)), divided by the number of scales."""
    total = sum(F.l1_loss(f, r.detach()) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
    return total / len(fake)


def vgg_feature_matching_loss(fake: dict[str, Tensor], real: dict[str, Tensor], self_ref: Tensor) -> Tensor:
    w = sample_weights(self_ref)
    return sum(weight * _weighted_l1(fake[name], real[name].detach(), w) for name, weight in FM_LAYERS)


def perceptual_loss(fake: dict[str, Tensor], real: dict[str, Tensor]) -> Tensor:
    return F.mse_loss(fake["relu4_2"], real["relu4_2"].detach())


def vgg_contextual_loss(fake: dict[str, Tensor], exemplar: dict[str, Tensor], *, h: float = 0.1) -> Tensor:
    """8 CX(relu5_2) + 4 CX(relu4_2) + 2 CX(avg-pooled relu3_2), against the exemplar."""
    return (8 * contextual_loss(fake["relu5_2"], exemplar["relu5_2"].detach(), h=h)
            + 4 * contextual_loss(fake["relu4_2"], exemplar["relu4_2"].detach(), h=h)
            + 2 * contextual_loss(F.avg_pool2d(fake["relu3_2"], 2), F.avg_pool2d(exemplar["relu3_2"].detach(), 2), h=h))


def reconstruction_loss(image: Tensor, real: Tensor, self_ref: Tensor) -> Tensor:
    """Per-sample-weighted L1 between the output and the target over the self pairs (not in the paper:
    the official objective reaches the target's pixels only through VGG features and D)."""
    return _weighted_l1(image, real, sample_weights(self_ref))


def weighted_total(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum_k weights[k] * losses[k]; every loss key must have a weight."""
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise KeyError(f"no loss weight for {missing}")
    return sum(weights[k] * v for k, v in losses.items())


