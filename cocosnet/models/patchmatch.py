"""Differentiable PatchMatch over continuous candidate positions, and its ConvGRU update.

Differences from the official `PatchMatchGRU` (also listed in docs/model.md):
  * candidates are continuous (x, y) positions; scores and warped colours are
    bilinear samples at those positions, so gradient reaches the positions,
    and through them the GRU (the official GRU never gets a gradient);
  * the next level starts from all k coarse candidates, not only #0;
  * propagation takes the neighbours' best candidates, shifted by one pixel;
  * random search around the current best with a shrinking radius (absent
    in the official code);
  * duplicates are removed before the top-k (the official code keeps them);
  * no index arithmetic: the official `floor(row * W + col)` conversion
    mis-handles fractional row offsets.
The search itself (which candidates survive) is discrete and runs without
gradient; the final scores are recomputed with gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models import memory, ops
from cocosnet.models.convgru import UpdateBlock
from cocosnet.models.ops import candidate_scores, clamp_coords, select_top_k, weighted_sample

Generators = torch.Generator | list[torch.Generator] | None
LOOKUP_SCALE = 10.0  # cosine differences (a few hundredths apart) as the GRU's input


class LevelDetails(NamedTuple):
    """What a level hands the training terms besides its candidates."""

    head_scores: Tensor  # (B, H, W, k) the final scores with their cosines detached, best first: what only the
    # re-ranking head can change (`rank_grad: head`)
    trail: list[Tensor]  # per GRU iteration, the candidates it moved (B, H, W, k, 2), unsorted (`flow_truth`)


def uniform(shape: tuple[int, ...], generator: Generators, like: Tensor) -> Tensor:
    """U[0, 1) of `shape` on like's device. A list of generators draws each batch
    element from its own, so results do not depend on how a batch is split
    (data-parallel ranks see the same numbers as one process)."""
    if isinstance(generator, list | tuple):
        return torch.stack([torch.rand(shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generator])
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def search_step(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, *, radius: float,
                num_random: int = 4, generator: Generators = None) -> tuple[Tensor, Tensor]:
    """One PatchMatch iteration: propagation, random search, evaluation, de-dup, top-k.

    coords (B, H, W, k, 2) best first with their scores (B, H, W, k). Propagation takes the best
    max(1, k/16) candidates of each of the 4 neighbours, shifted by the step to this pixel; random
    samples lie around the best candidate at radii radius, radius/2, ...; the best snapped to the
    pixel grid joins them (exact matches sit on it). Runs without gradient (`ops.search_step`).
    """
    b, h, w, k, _ = coords.shape
    with torch.no_grad():
        radii = radius * 0.5 ** torch.arange(num_random, device=coords.device, dtype=coords.dtype)
        jitter = (uniform((b, h, w, num_random, 2), generator, coords) * 2 - 1) * radii[:, None]
        return ops.search_step(query, key, coords, scores.detach(), jitter, max(1, k // 16))


def initial_candidates(query: Tensor, key: Tensor, k: int, init: Tensor | None, generator: Generators, *,
                       radius: float = 4.0) -> tuple[Tensor, Tensor, float]:
    """Start from `init` (any k0 >= 1, padded by random samples within `radius` of its first
    candidate) or, with init None, from uniform random positions (then the first random-search
    radius is half the key's size). Returns the top-k candidates, their scores and that radius."""
    b, _, h, w = query.shape
    hk, wk = key.shape[-2:]
    with torch.no_grad():
        if init is None:
            size = query.new_tensor([wk - 1, hk - 1])
            coords = uniform((b, h, w, k, 2), generator, query) * size
            radius = max(hk, wk) / 2
        else:
            if init.dim() != 5 or init.shape[:3] != (b, h, w) or init.shape[-1] != 2:
                raise ValueError(f"init must be (B, H, W, k0, 2) = ({b}, {h}, {w}, k0, 2), got {tuple(init.shape)}")
            coords = init.to(query.dtype)
            if coords.shape[3] < k:
                extra = k - coords.shape[3]
                noise = uniform((b, h, w, extra, 2), generator, query) * 2 - 1
                coords = torch.cat([coords, coords[..., :1, :] + noise * radius], dim=3)
        coords = clamp_coords(coords, hk, wk)
        return (*select_top_k(coords, candidate_scores(query, key, coords), k, hk, wk), radius)


def patch_match(query: Tensor, key: Tensor, *, k: int = 16, iters: int = 5, init: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """PatchMatch of every query pixel against the key feature map.

    query (B, C, H, W), key (B, C, Hk, Wk): features, already L2-normalised over C.
    init (B, H, W, k0, 2) float (x, y) positions in key pixels, any k0 >= 1;
    None = random start. The random search uses the defaults of `PatchMatchGRU` (radius 4 with an
    init, halved every iteration; 4 samples per pixel and iteration). Returns coords (B, H, W, k, 2) float (x, y) in key
    pixels, best first, and scores (B, H, W, k), the matching similarity,
    sorted descending and differentiable with respect to query and key.
    """
    if query.dim() != 4 or key.dim() != 4 or query.shape[:2] != key.shape[:2]:
        raise ValueError(f"query and key must be (B, C, H, W) with equal B and C, got "
                         f"{tuple(query.shape)} and {tuple(key.shape)}")
    query, key = ops.search_layout(query), ops.search_layout(key)
    coords, scores, radius = initial_candidates(query, key, k, init, generator)
    for it in range(iters):
        coords, scores = search_step(query, key, coords, scores, radius=radius * 0.5 ** it, generator=generator)
    if torch.is_grad_enabled():  # the search's scores are current but carry no gradient
        scores = candidate_scores(query, key, coords)
    scores, order = scores.sort(dim=-1, descending=True)
    return coords.gather(-2, order.unsqueeze(-1).expand(*order.shape, 2)), scores


def pixel_grid(b: int, h: int, w: int, device, dtype) -> Tensor:
    """(B, H, W, 1, 2) (x, y) of every pixel."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], dim=-1).expand(b, h, w, 2).unsqueeze(3)


class PatchMatchGRU(nn.Module):
    """One correspondence level: PatchMatch search, refined by a ConvGRU after every iteration.

    The GRU sees the k candidates' scores and offsets and outputs continuous
    deltas. The final positions are `searched.detach() + delta`, and the warp
    bilinearly samples the exemplar colours there, so the warp loss trains the
    GRU. Each large update is checkpointed in training, so memory stays O(H*W*k*C).
    With `update_stride` s > 1 the GRU runs on an s-times pooled grid and its
    deltas are upsampled bilinearly (RAFT runs its GRU at 1/8): the search
    stays per pixel, the learned refinement is smooth, and the update costs s^2
    times less. With `gru=False` the level is search only (what the official
    code does in effect, since its GRU never learns): no GRU parameters, and
    the final positions are the searched ones. With `rerank` the last update also
    adds a learned bias to each candidate's final score, so the GRU can change
    which candidate is first (a jump of any length, e.g. to a neighbour's match),
    not only move candidates by its deltas; the returned scores then include it.
    With `gru_reads_detached` the GRU reads the matching features without passing
    gradient back to them (`rank_grad: head`: the ranking terms train the GRU alone).
    """

    def __init__(self, feature_dim: int, *, num_candidates: int = 16, iters: int = 5, hidden_dim: int = 32,
                 temperature: float = 0.01, update_stride: int = 2, gru: bool = True, search_radius: float = 4.0,
                 search_samples: int = 4, rerank: bool = False, gru_reads_detached: bool = False, lookup: int = 0):
        super().__init__()
        self.lookup = [(dx, dy) for dy in range(-lookup, lookup + 1) for dx in range(-lookup, lookup + 1)
                       if lookup and (dx, dy) != (0, 0)]
        self.k, self.iters, self.temperature = num_candidates, iters, temperature
        self.stride, self.gru, self.rerank = update_stride, gru, gru and rerank
        self.gru_reads_detached = gru_reads_detached
        self.search_radius, self.search_samples = search_radius, search_samples
        if gru:
            self.hidden_init = nn.Sequential(
                nn.Conv2d(2 * feature_dim, hidden_dim, 3, padding=1, bias=False), nn.InstanceNorm2d(hidden_dim),
                nn.ReLU(), nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
                nn.InstanceNorm2d(hidden_dim), nn.ReLU())
            self.update = UpdateBlock(num_candidates, hidden_dim, rerank=self.rerank, window=len(self.lookup))

    def _pool(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x
        size = (-(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride))
        return F.adaptive_avg_pool2d(x, size)

    @torch.no_grad()
    def _cost_window(self, query: Tensor, key: Tensor, coords: Tensor, scores: Tensor) -> Tensor:
        """(B, H, W, k * window): the cosine at each of the lookup's offsets around each candidate, less the
        candidate's own, scaled like the refiner's score gaps: the local cost surface (RAFT's lookup)."""
        hk, wk = key.shape[-2:]
        around = [candidate_scores(query, key, clamp_coords(coords + coords.new_tensor(d), hk, wk))
                  for d in self.lookup]
        return ((torch.stack(around, -1) - scores.unsqueeze(-1)) * LOOKUP_SCALE).flatten(-2)

    def _update(self, h: Tensor, scores: Tensor, offsets: Tensor, cost: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> new hidden state, deltas (B, H, W, k, 2) and score bias (B, H, W, k) or None, at full resolution."""
        b, hh, ww, k, _ = offsets.shape
        probs = torch.softmax(scores / self.temperature, dim=-1)
        seen = probs if cost is None else torch.cat([probs, cost], dim=-1)
        corr = self._pool(seen.permute(0, 3, 1, 2))  # (B, k (1 + window), h', w')
        # A channels-last view: `permute(0, 3, 4, 1, 2).reshape` gave the same strides, except a batch stride
        # (B = 1) that made the pooling copy the map to NCHW first (13x slower at 1024^2).
        flow = self._pool(offsets.reshape(b, hh, ww, 2 * k).permute(0, 3, 1, 2))  # (B, 2k, h', w')
        h, delta, bias = memory.gru_update(self.update, h, corr, flow, training=self.training)
        if self.stride > 1:
            delta = F.interpolate(delta, size=(hh, ww), mode="bilinear", align_corners=False)
            if bias is not None:
                bias = F.interpolate(bias, size=(hh, ww), mode="bilinear", align_corners=False)
        delta = delta.view(b, k, 2, hh, ww).permute(0, 3, 4, 1, 2)
        return h, delta, None if bias is None else bias.permute(0, 2, 3, 1)

    def forward(self, query: Tensor, key: Tensor, key_colors: Tensor, init: Tensor | None = None,
                generator: Generators = None, *, details: bool = False) -> tuple:
        """query (B, C, H, W), key (B, C, Hk, Wk), key_colors (B, c, Hk, Wk) at the key's size.

        Returns coords (B, H, W, k, 2) best first, scores (B, H, W, k) and the
        softmax warp of the colours (B, c, H, W); with `details` also a `LevelDetails`
        for the training terms.
        """
        b, _, h, w = query.shape
        hk, wk = key.shape[-2:]
        q_search, k_search = ops.search_layout(query), ops.search_layout(key)  # read by every score pass
        coords, scores, radius = initial_candidates(q_search, k_search, self.k, init, generator,
                                                    radius=self.search_radius)
        if self.gru:
            # pooled before the concatenation: the same values, a quarter of the copy at stride 2
            best = weighted_sample(key, coords[..., :1, :], coords.new_ones(b, h, w, 1))
            seen = torch.cat([self._pool(query), self._pool(best)], 1)
            hidden = self.hidden_init(seen.detach() if self.gru_reads_detached else seen)
            grid = pixel_grid(b, h, w, query.device, query.dtype) * query.new_tensor([wk / w, hk / h])
        trail = []
        for it in range(self.iters):
            searched, scores = search_step(q_search, k_search, coords.detach(), scores, radius=radius * 0.5 ** it,
                                           num_random=self.search_samples, generator=generator)
            if not self.gru:
                coords = searched
                continue
            cost = self._cost_window(q_search, k_search, searched, scores) if self.lookup else None
            hidden, delta, bias = self._update(hidden, scores, searched - grid, cost)
            coords = clamp_coords(searched + delta, hk, wk)
            trail.append(coords)
            if it < self.iters - 1:  # the last positions are scored once, below
                with torch.no_grad():
                    scores = candidate_scores(q_search, k_search, coords)
        if (self.gru and self.iters > 0) or torch.is_grad_enabled():  # else the search's scores are current
            scores = candidate_scores(q_search, k_search, coords)
        head = scores.detach()
        if self.rerank:
            scores, head = scores + bias, head + bias  # the last update's bias, in the order of its candidates
        scores, order = scores.sort(dim=-1, descending=True)
        coords = coords.gather(-2, order.unsqueeze(-1).expand(*order.shape, 2))
        warp = weighted_sample(key_colors, coords, torch.softmax(scores / self.temperature, dim=-1))
        if details:
            return coords, scores, warp, LevelDetails(head.gather(-1, order), trail)
        return coords, scores, warp
