"""The ranking term (`loss_weights.rank`, not in the paper): teach the match score to put first the
candidate whose exemplar patch looks like the target's.

PatchMatch keeps k candidates per pixel, and the best of them is far better than the one the score
ranks first (docs/studies/correspondence.md, section 6). The warp loss compares only the softmax
average with the target, so nothing rewards the order itself. This term does, with what a real
dataset has: on a self pair the target photo is known, so each candidate gets a photometric cost,
the mean |colour difference| between the 3x3 exemplar patch at the candidate and the target patch at
the pixel, and the candidates' scores / temperature are pulled towards softmax(-cost / RANK_SIGMA)
by a KL divergence (a soft cross-entropy, as LoFTR and PatchmatchNet supervise their choices, with
the photometric cost standing in for the true match a synthetic set alone would give). Where the
candidates look alike (flat cloth, background) the target is near uniform, so the term asks for
equal scores there. Ref pairs have no target photo and do not count.

`truth_ranking_loss` (`loss_weights.rank_truth`) is the same choice supervised with the true match,
which only the synthetic set has: the measure of what the photometric target gives up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cocosnet.losses.terms import sample_weights
from cocosnet.metrics.correspondence import level_gt
from cocosnet.models.blocks import resize_to
from cocosnet.models.ops import candidate_scores, sample_at

TRUTH_REACH = 1.5  # level pixels: a candidate this near the true match counts as it
FLOW_REACH = 3.0  # level pixels: the GRU's deltas are asked to close gaps up to this; farther is a wrong match
FLOW_GAMMA = 0.8  # RAFT's sequence weight: iteration i of n counts gamma ** (n - 1 - i)
RANK_SIGMA = 0.05  # cost scale of the target distribution: colours in [-1, 1], a mean over 27 values
PATCH_OFFSETS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def patch_costs(exemplar: Tensor, target: Tensor, coords: Tensor) -> Tensor:
    """exemplar (B, 3, Hk, Wk), target (B, 3, H, W), coords (B, H, W, k, 2) in exemplar pixels ->
    (B, H, W, k): mean |exemplar patch at the candidate - target patch at the pixel| over a 3x3 patch."""
    b, h, w, k, _ = coords.shape
    padded = F.pad(target, (1, 1, 1, 1), mode="replicate")
    cost = coords.new_zeros(b, h, w, k)
    for dx, dy in PATCH_OFFSETS:
        seen = sample_at(exemplar, coords + coords.new_tensor([dx, dy]))  # (B, 3, H, W, k)
        here = padded[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w].unsqueeze(-1)
        cost += (seen - here).abs().mean(1)
    return cost / len(PATCH_OFFSETS)


def ranking_loss(scores: list[Tensor], coords: list[Tensor], *, exemplar: Tensor, real: Tensor,
                 self_ref: Tensor, temperature: float) -> Tensor:
    """Sum over levels of the self-pair-weighted mean KL(target || softmax(scores / temperature)).

    scores (B, h_l, w_l, k), coords (B, h_l, w_l, k, 2) per level, coarse to fine, in the level's
    exemplar pixels (the exemplar and the target photo share the level's size)."""
    weights = sample_weights(self_ref)
    total = exemplar.new_zeros(())
    for level_scores, level_coords in zip(scores, coords):
        size = tuple(level_scores.shape[1:3])
        with torch.no_grad():
            cost = patch_costs(resize_to(exemplar.float(), size, "area"), resize_to(real.float(), size, "area"),
                               level_coords.float())
            goal = torch.softmax(-cost / RANK_SIGMA, dim=-1)
        log_p = torch.log_softmax(level_scores.float() / temperature, dim=-1)
        kl = (goal * (torch.log(goal.clamp_min(1e-12)) - log_p)).sum(-1)  # (B, h, w)
        total = total + (kl.flatten(1).mean(1) * weights.to(kl.dtype)).sum()
    return total


def truth_ranking_loss(scores: list[Tensor], coords: list[Tensor], *, truth: Tensor, valid: Tensor,
                       temperature: float, features: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Sum over levels of the cross-entropy of softmax(scores / temperature) against the candidate nearest
    the true match, over the pixels with a true match (the synthetic set's supervision; every pair counts,
    ref pairs too, since the truth is geometric).

    Where no candidate lies within TRUTH_REACH of the truth, the true position itself joins the
    candidates as the one to choose, scored like them from `features` (each level's (query, key),
    (B, C, h, w) and (B, C, hk, wk)), as LoFTR supervises its coarse matches; without `features`
    those pixels do not count. truth (B, S, S, 2) exemplar-crop (x, y) of every target pixel,
    valid (B, S, S); scores, coords as in `ranking_loss`."""
    total = truth.new_zeros(())
    for i, (level_scores, level_coords) in enumerate(zip(scores, coords)):
        gt, ok = level_gt(truth, valid, tuple(level_scores.shape[1:3]))
        distance, choice = (level_coords.detach().float() - gt.unsqueeze(-2)).norm(dim=-1).min(-1)  # (B, h, w)
        logits = level_scores.float()
        if features is not None:
            query, key = features[i]
            hk, wk = key.shape[-2:]
            true_pos = (gt + 0.5) * gt.new_tensor([wk / gt.shape[2], hk / gt.shape[1]]) - 0.5  # key pixels
            # its cosine alone: a `rerank` bias exists only for the candidates the GRU saw
            true_score = candidate_scores(query.float(), key.float(), true_pos.unsqueeze(-2))  # (B, h, w, 1)
            logits = torch.cat([logits, true_score.float()], dim=-1)
            choice = torch.where(distance <= TRUTH_REACH, choice, torch.full_like(choice, logits.shape[-1] - 1))
        else:
            ok = ok & (distance <= TRUTH_REACH)
        if ok.any():
            log_p = torch.log_softmax(logits / temperature, dim=-1)
            total = total - log_p.gather(-1, choice.unsqueeze(-1)).squeeze(-1)[ok].mean()
    return total


def truth_flow_loss(trails: list[list[Tensor]], *, truth: Tensor, valid: Tensor, reach: float = FLOW_REACH,
                    gamma: float = FLOW_GAMMA) -> Tensor:
    """The GRU's moves supervised with the true match (`loss_weights.flow_truth`, synthetic data only), as
    RAFT supervises every update: at every level and GRU iteration, the distance from each pixel's
    candidate nearest the truth to the truth (L1, level pixels), where that candidate is within `reach`,
    weighted gamma ** (n - 1 - i) over the n iterations, so that later iterations count more. Farther
    candidates are wrong matches that a delta of a few pixels cannot mend; the ranking terms are for them.
    The searched positions are detached, so the gradient reaches the GRU alone (and what it reads).

    trails: per level, the GRU's candidates (B, h, w, k, 2) after each iteration (a search-only level: []);
    truth (B, S, S, 2) exemplar-crop (x, y) of every target pixel, valid (B, S, S)."""
    total = truth.new_zeros(())
    for trail in trails:
        if not trail:
            continue
        gt, ok = level_gt(truth, valid, tuple(trail[0].shape[1:3]))
        for i, coords in enumerate(trail):
            nearest = (coords.float() - gt.unsqueeze(-2)).abs().sum(-1).min(-1).values  # (B, h, w)
            near = ok & (nearest.detach() <= reach)
            if near.any():
                total = total + gamma ** (len(trail) - 1 - i) * nearest[near].mean()
    return total
