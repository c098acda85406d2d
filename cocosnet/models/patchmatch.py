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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.models import kernels
from cocosnet.models.checkpointing import maybe_checkpoint
from cocosnet.models.convgru import UpdateBlock

SCORE_CHUNK = 8  # candidates sampled at once: bounds memory to O(B*C*H*W*SCORE_CHUNK)
WARP_CHUNK_ELEMENTS = 2**22  # samples a warp's backward builds at once (B*C*H*W*candidates)
# Floats one UpdateBlock call keeps per pixel of its grid for backward (measured: 1264 at k = 16,
# 1176 at k = 8; tests/test_patchmatch.py checks it). It decides which updates are checkpointed.
UPDATE_CHANNELS_KEPT = 1232


def sample_at(source: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample `source` (B, C, Hk, Wk) at `coords` (B, H, W, K, 2) (x, y) in pixels.

    Returns (B, C, H, W, K). Positions outside the map are clamped to the border.
    """
    b, c, hk, wk = source.shape
    _, h, w, k, _ = coords.shape
    scale = coords.new_tensor([2.0 / max(wk - 1, 1), 2.0 / max(hk - 1, 1)])
    grid = (coords * scale - 1.0).reshape(b, h, w * k, 2)
    out = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="border",
                        align_corners=True)  # (B, C, H, W*K)
    return out.view(b, c, h, w, k)


def _sampled_sum(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    return (sample_at(source, coords) * weights.unsqueeze(1)).sum(-1)


class _WeightedSample(torch.autograd.Function):
    """`weighted_sample` with autograd on the CPU. The kernel's forward keeps only its inputs; backward
    recomputes the `grid_sample` path a few candidates at a time. The path alone keeps the grid and the
    (B, C, H, W, K) samples from forward to backward: 80 MB for a 512^2 level's warp at k = 16."""

    @staticmethod
    def forward(ctx, source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(source, coords, weights)
        return kernels.weighted_samples(source, coords, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        source, coords, weights = ctx.saved_tensors
        needs = ctx.needs_input_grad
        b, c, h, w = grad.shape
        chunk = max(1, WARP_CHUNK_ELEMENTS // (b * c * h * w))
        src = source.detach().requires_grad_(needs[0])
        g_source, g_coords, g_weights = None, [], []
        with torch.enable_grad():
            for j in range(0, coords.shape[3], chunk):
                part = (src, coords[..., j:j + chunk, :].detach().requires_grad_(needs[1]),
                        weights[..., j:j + chunk].detach().requires_grad_(needs[2]))
                wanted = [t for t, need in zip(part, needs) if need]
                got = iter(torch.autograd.grad(_sampled_sum(*part), wanted, grad))
                if needs[0]:
                    g = next(got)
                    g_source = g if g_source is None else g_source + g
                if needs[1]:
                    g_coords.append(next(got))
                if needs[2]:
                    g_weights.append(next(got))
        return (g_source, torch.cat(g_coords, 3) if needs[1] else None,
                torch.cat(g_weights, 3) if needs[2] else None)


def weighted_sample(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    """sum_k weights[..., k] * sample_at(source, coords)[..., k]: source (B, C, Hk, Wk), coords (B, H, W, K, 2),
    weights (B, H, W, K) -> (B, C, H, W). On the CPU one kernel (models/kernels.py), with autograd through
    `_WeightedSample`; elsewhere the `grid_sample` path."""
    if not kernels.samples_apply(source, coords, weights):
        return _sampled_sum(source, coords, weights)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (source, coords, weights)):
        return _WeightedSample.apply(source, coords, weights)
    return kernels.weighted_samples(source, coords, weights)


def _chunk_scores(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    return (sample_at(key, coords) * query.unsqueeze(-1)).sum(1)


def candidate_scores(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    """Cosine similarity of each query pixel with the key sampled at its candidates.

    query (B, C, H, W), key (B, C, Hk, Wk), coords (B, H, W, K, 2) -> (B, H, W, K).
    On the CPU this is the fused kernel (models/kernels.py), which builds nothing of size
    (B, C, H, W, K). Elsewhere (or without a compiler) it is `grid_sample`, SCORE_CHUNK candidates
    at a time; with autograd on, each large chunk is checkpointed, so backward keeps one chunk of
    samples alive, not all K.
    """
    if kernels.scores_apply(query, key, coords):
        return kernels.fused_scores(query, key, coords)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, coords))
    chunks = coords.split(SCORE_CHUNK, dim=3)
    if grad:
        return torch.cat([maybe_checkpoint(_chunk_scores, query, key, c, elements=query.numel() * c.shape[3])
                          for c in chunks], dim=-1)
    return torch.cat([_chunk_scores(query, key, c) for c in chunks], dim=-1)


Generators = torch.Generator | list[torch.Generator] | None


def uniform(shape: tuple[int, ...], generator: Generators, like: Tensor) -> Tensor:
    """U[0, 1) of `shape` on like's device. A list of generators draws each batch
    element from its own, so results do not depend on how a batch is split
    (data-parallel ranks see the same numbers as one process)."""
    if isinstance(generator, list | tuple):
        return torch.stack([torch.rand(shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generator])
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def clamp_coords(coords: Tensor, hk: int, wk: int) -> Tensor:
    """(x, y) positions (..., 2) clamped into a key of (hk, wk), in one pass."""
    return coords.clamp(min=coords.new_zeros(2), max=coords.new_tensor([wk - 1, hk - 1]))


def select_top_k(coords: Tensor, scores: Tensor, k: int, hk: int, wk: int) -> tuple[Tensor, Tensor]:
    """Drop duplicate candidates (same half-pixel cell), keep the best k, best first.

    coords (B, H, W, N, 2), scores (B, H, W, N) -> (B, H, W, k, 2), (B, H, W, k).
    On the CPU, one small sort per pixel in the kernel of models/kernels.py (the same result up
    to the order of ties).
    """
    if kernels.select_applies(coords, scores):
        return kernels.select_top_k(coords, scores, k)
    cells = torch.round(coords * 2).long()
    cell_id = cells[..., 1] * (2 * wk + 3) + cells[..., 0]
    order = scores.argsort(dim=-1, descending=True)
    ids_by_score = cell_id.gather(-1, order)
    # A stable sort by cell keeps, within each cell, the best-scoring candidate first.
    ids_sorted, by_cell = torch.sort(ids_by_score, dim=-1, stable=True)
    dup_sorted = torch.zeros_like(ids_sorted, dtype=torch.bool)
    dup_sorted[..., 1:] = ids_sorted[..., 1:] == ids_sorted[..., :-1]
    dup = torch.zeros_like(dup_sorted).scatter(-1, by_cell, dup_sorted)  # in score order
    ranked = scores.gather(-1, order).masked_fill(dup, float("-inf"))
    top = ranked.topk(min(k, ranked.shape[-1]), dim=-1)
    keep = order.gather(-1, top.indices)
    out_coords = coords.gather(-2, keep.unsqueeze(-1).expand(*keep.shape, 2))
    return out_coords, scores.gather(-1, keep)


def _neighbour_candidates(coords: Tensor, m: int) -> Tensor:
    """The best m candidates of the 4 neighbours, shifted by the step to this pixel.

    coords (B, H, W, K, 2) -> (B, H, W, 4m, 2). At the border a pixel sees itself.
    """
    best = coords[..., :m, :]
    left = torch.cat([best[:, :, :1], best[:, :, :-1]], dim=2) + best.new_tensor([1.0, 0.0])
    right = torch.cat([best[:, :, 1:], best[:, :, -1:]], dim=2) - best.new_tensor([1.0, 0.0])
    up = torch.cat([best[:, :1], best[:, :-1]], dim=1) + best.new_tensor([0.0, 1.0])
    down = torch.cat([best[:, 1:], best[:, -1:]], dim=1) - best.new_tensor([0.0, 1.0])
    return torch.cat([left, right, up, down], dim=3)


def search_step(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, *, radius: float,
                num_random: int = 4, generator: Generators = None) -> tuple[Tensor, Tensor]:
    """One PatchMatch iteration: propagation, random search, evaluation, de-dup, top-k.

    coords (B, H, W, k, 2) best first with their scores (B, H, W, k). Random
    samples lie around the best candidate at radii radius, radius/2, ...
    Runs without gradient. On the CPU the iteration is one kernel (models/kernels.py) that builds
    none of the candidate tensors; the same candidates, scores and selection.
    """
    b, h, w, k, _ = coords.shape
    hk, wk = key.shape[-2:]
    with torch.no_grad():
        m = max(1, k // 16)
        radii = radius * 0.5 ** torch.arange(num_random, device=coords.device, dtype=coords.dtype)
        jitter = (uniform((b, h, w, num_random, 2), generator, coords) * 2 - 1) * radii[:, None]
        if kernels.search_applies(query, key, coords, scores):
            return kernels.search_step(query, key, coords, scores.detach(), jitter, m)
        best = coords[..., :1, :]
        # The best candidate snapped to the pixel grid: exact matches sit on it.
        new = torch.cat([_neighbour_candidates(coords, m), torch.round(best), best + jitter], dim=3)
        new = clamp_coords(new, hk, wk)
        all_coords = torch.cat([coords, new], dim=3)
        all_scores = torch.cat([scores.detach(), candidate_scores(query, key, new)], dim=3)
        return select_top_k(all_coords, all_scores, k, hk, wk)


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
    query, key = kernels.search_layout(query), kernels.search_layout(key)
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
    """

    def __init__(self, feature_dim: int, *, num_candidates: int = 16, iters: int = 5, hidden_dim: int = 32,
                 temperature: float = 0.01, update_stride: int = 2, gru: bool = True, search_radius: float = 4.0,
                 search_samples: int = 4, rerank: bool = False):
        super().__init__()
        self.k, self.iters, self.temperature = num_candidates, iters, temperature
        self.stride, self.gru, self.rerank = update_stride, gru, gru and rerank
        self.search_radius, self.search_samples = search_radius, search_samples
        if gru:
            self.hidden_init = nn.Sequential(
                nn.Conv2d(2 * feature_dim, hidden_dim, 3, padding=1, bias=False), nn.InstanceNorm2d(hidden_dim),
                nn.ReLU(), nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
                nn.InstanceNorm2d(hidden_dim), nn.ReLU())
            self.update = UpdateBlock(num_candidates, hidden_dim, rerank=self.rerank)

    def _pool(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x
        size = (-(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride))
        return F.adaptive_avg_pool2d(x, size)

    def _update(self, h: Tensor, scores: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """-> new hidden state, deltas (B, H, W, k, 2) and score bias (B, H, W, k) or None, at full resolution."""
        b, hh, ww, k, _ = offsets.shape
        corr = self._pool(torch.softmax(scores / self.temperature, dim=-1).permute(0, 3, 1, 2))  # (B, k, h', w')
        # A channels-last view: `permute(0, 3, 4, 1, 2).reshape` gave the same strides, except a batch stride
        # (B = 1) that made the pooling copy the map to NCHW first (13x slower at 1024^2).
        flow = self._pool(offsets.reshape(b, hh, ww, 2 * k).permute(0, 3, 1, 2))  # (B, 2k, h', w')
        if self.training and torch.is_grad_enabled():
            if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
                # bf16 convolutions run 15% faster here channels-last, backward included (fp32 ones do not:
                # docs/performance.md, items 6 and 22)
                h, corr, flow = (t.contiguous(memory_format=torch.channels_last) for t in (h, corr, flow))
            kept = h.numel() // h.shape[1] * UPDATE_CHANNELS_KEPT  # the update's activations per pixel
            h, delta, bias = maybe_checkpoint(self.update, h, corr, flow, elements=kept)
        elif not torch.is_grad_enabled() and h.device.type == "cpu":
            # Channels-last convolutions are about 30% faster forward here at 512^2 (equal to 1e-6), but
            # slower backward, so only without autograd (docs/performance.md).
            h, delta, bias = self.update(*(t.contiguous(memory_format=torch.channels_last) for t in (h, corr, flow)))
        else:
            h, delta, bias = self.update(h, corr, flow)
        if self.stride > 1:
            delta = F.interpolate(delta, size=(hh, ww), mode="bilinear", align_corners=False)
            if bias is not None:
                bias = F.interpolate(bias, size=(hh, ww), mode="bilinear", align_corners=False)
        delta = delta.view(b, k, 2, hh, ww).permute(0, 3, 4, 1, 2)
        return h, delta, None if bias is None else bias.permute(0, 2, 3, 1)

    def forward(self, query: Tensor, key: Tensor, key_colors: Tensor, init: Tensor | None = None,
                generator: Generators = None) -> tuple[Tensor, Tensor, Tensor]:
        """query (B, C, H, W), key (B, C, Hk, Wk), key_colors (B, c, Hk, Wk) at the key's size.

        Returns coords (B, H, W, k, 2) best first, scores (B, H, W, k) and the
        softmax warp of the colours (B, c, H, W).
        """
        b, _, h, w = query.shape
        hk, wk = key.shape[-2:]
        q_search, k_search = kernels.search_layout(query), kernels.search_layout(key)  # read by every score pass
        coords, scores, radius = initial_candidates(q_search, k_search, self.k, init, generator,
                                                    radius=self.search_radius)
        if self.gru:
            # pooled before the concatenation: the same values, a quarter of the copy at stride 2
            best = weighted_sample(key, coords[..., :1, :], coords.new_ones(b, h, w, 1))
            hidden = self.hidden_init(torch.cat([self._pool(query), self._pool(best)], 1))
            grid = pixel_grid(b, h, w, query.device, query.dtype) * query.new_tensor([wk / w, hk / h])
        for it in range(self.iters):
            searched, scores = search_step(q_search, k_search, coords.detach(), scores, radius=radius * 0.5 ** it,
                                           num_random=self.search_samples, generator=generator)
            if not self.gru:
                coords = searched
                continue
            hidden, delta, bias = self._update(hidden, scores, searched - grid)
            coords = clamp_coords(searched + delta, hk, wk)
            if it < self.iters - 1:  # the last positions are scored once, below
                with torch.no_grad():
                    scores = candidate_scores(q_search, k_search, coords)
        if (self.gru and self.iters > 0) or torch.is_grad_enabled():  # else the search's scores are current
            scores = candidate_scores(q_search, k_search, coords)
        if self.rerank:
            scores = scores + bias  # the last update's bias, in the order of its candidates
        scores, order = scores.sort(dim=-1, descending=True)
        coords = coords.gather(-2, order.unsqueeze(-1).expand(*order.shape, 2))
        warp = weighted_sample(key_colors, coords, torch.softmax(scores / self.temperature, dim=-1))
        return coords, scores, warp
