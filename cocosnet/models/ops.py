"""The PatchMatch primitives as PyTorch custom ops (`torch.library`), one function per op:

    candidate_scores(query, key, coords)                 each query pixel's cosine with the key at its candidates
    select_top_k(coords, scores, k, hk, wk)              the best k with distinct half-pixel cells, best first
    search_step(query, key, coords, scores, jitter, m)   one PatchMatch iteration (models/patchmatch.py)
    weighted_sample(source, coords, weights)             a weighted sum of bilinear samples: a level's warp

Each op has two implementations. The tensor code below runs on every device (a GPU, or a CPU without
a compiler); the C++ kernels (models/kernels.cpp, built by models/kernels.py) are the CPU
implementation, for float32 and float64, and build nothing of size (B, C, H, W, K). Both give the same
values to float rounding, and the same candidates (tests/test_kernels.py). COCOSNET_CPU_KERNELS=0 runs
the tensor code on the CPU too. Fake (meta) implementations give `torch.compile` the output shapes.

Gradients: `candidate_scores` and `weighted_sample` are differentiable in every input; the backward of
the tensor code recomputes its samples a few candidates at a time (memory.py's chunk sizes), so nothing
of size (B, C, H, W, K) is kept between forward and backward. The search ops run without gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cocosnet.models import kernels, memory

_KERNEL_DTYPES = (torch.float32, torch.float64)


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


def _cpu_kernels(*tensors: Tensor):
    """The compiled kernels when they take these tensors (one float32/float64 dtype), else None."""
    dtype = tensors[0].dtype
    if dtype in _KERNEL_DTYPES and all(t.dtype == dtype for t in tensors):
        return kernels.extension()
    return None


def _kernel_layout(*tensors: Tensor) -> torch.memory_format:
    """The layout of the maps an op returns: channels-last from the CPU kernels, else the default."""
    if tensors[0].device.type == "cpu" and _cpu_kernels(*tensors) is not None:
        return torch.channels_last
    return torch.contiguous_format


def _channels_innermost(x: Tensor) -> Tensor:
    """(B, C, H, W) -> the contiguous (B, H, W, C) the kernels read; free after `search_layout`."""
    return x.permute(0, 2, 3, 1).contiguous()


def search_layout(x: Tensor) -> Tensor:
    """x (B, C, H, W) stored channels-last where the CPU kernels will read it (unchanged elsewhere). A
    level calls this once for its query and key: each score pass would otherwise copy both (at 1024^2,
    2 x 200 MB per pass, about 11 passes per level). Differentiable, values unchanged."""
    if x.device.type == "cpu" and _cpu_kernels(x) is not None:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# candidate_scores ---------------------------------------------------------------------------------

def _chunk_scores(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    return (sample_at(key, coords) * query.unsqueeze(-1)).sum(1)


def _candidate_scores(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    """query (B, C, H, W), key (B, C, Hk, Wk), coords (B, H, W, K, 2) (x, y) in key pixels -> (B, H, W, K):
    `(sample_at(key, coords) * query[..., None]).sum(1)`, a few candidates at a time."""
    chunk = memory.score_chunk(coords.shape[3])
    return torch.cat([_chunk_scores(query, key, c) for c in coords.split(chunk, dim=3)], dim=-1)


candidate_scores = torch.library.custom_op("cocosnet::candidate_scores", _candidate_scores, mutates_args=())


@candidate_scores.register_kernel("cpu")
def _(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    ext = _cpu_kernels(query, key)
    if ext is None or not coords.is_floating_point():
        return _candidate_scores(query, key, coords)
    return ext.scores_forward(_channels_innermost(query), _channels_innermost(key), coords.to(query.dtype).contiguous())


@candidate_scores.register_fake
def _(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    return query.new_empty(coords.shape[:4])


def _candidate_scores_backward(grad: Tensor, query: Tensor, key: Tensor,
                               coords: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of `candidate_scores` for query, key and coords, resampling the key a few candidates
    at a time: grad (B, H, W, K) -> (B, C, H, W), (B, C, Hk, Wk), (B, H, W, K, 2)."""
    b, c, hk, wk = key.shape
    _, h, w, k, _ = coords.shape
    scale = coords.new_tensor([2.0 / max(wk - 1, 1), 2.0 / max(hk - 1, 1)])  # as in `sample_at`
    chunk = memory.score_chunk(k)
    g_query, g_key, g_coords = torch.zeros_like(query), torch.zeros_like(key), []
    for j in range(0, k, chunk):
        part = coords[..., j:j + chunk, :]
        kc = part.shape[3]
        grid = (part * scale - 1.0).reshape(b, h, w * kc, 2).to(key.dtype)
        samples = F.grid_sample(key, grid, mode="bilinear", padding_mode="border", align_corners=True)
        g = grad[..., j:j + kc].unsqueeze(1)  # (B, 1, H, W, kc)
        g_query += (samples.view(b, c, h, w, kc) * g).sum(-1)
        g_samples = (query.unsqueeze(-1) * g).reshape(b, c, h, w * kc)
        # grid_sample's own backward (bilinear = 0, border = 1, align_corners), for the key and the grid
        gk, gg = torch.ops.aten.grid_sampler_2d_backward(g_samples, key, grid, 0, 1, True, [True, True])
        g_key += gk
        g_coords.append(gg.view(b, h, w, kc, 2).to(coords.dtype) * scale)
    return g_query, g_key, torch.cat(g_coords, dim=3)


candidate_scores_backward = torch.library.custom_op("cocosnet::candidate_scores_backward", _candidate_scores_backward,
                                                    mutates_args=())


@candidate_scores_backward.register_kernel("cpu")
def _(grad: Tensor, query: Tensor, key: Tensor, coords: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    ext = _cpu_kernels(query, key)
    if ext is None or not coords.is_floating_point():
        return _candidate_scores_backward(grad, query, key, coords)
    g_query, g_key, g_coords = ext.scores_backward(grad, _channels_innermost(query), _channels_innermost(key),
                                                   coords.to(query.dtype).contiguous())
    return g_query.permute(0, 3, 1, 2), g_key.permute(0, 3, 1, 2), g_coords


@candidate_scores_backward.register_fake
def _(grad: Tensor, query: Tensor, key: Tensor, coords: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    layout = _kernel_layout(query, key)
    return torch.empty_like(query, memory_format=layout), torch.empty_like(key, memory_format=layout), \
        torch.empty_like(coords)


def _scores_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _scores_backward(ctx, grad: Tensor):
    query, key, coords = ctx.saved_tensors
    return candidate_scores_backward(grad.contiguous(), query, key, coords)


candidate_scores.register_autograd(_scores_backward, setup_context=_scores_setup)


# select_top_k --------------------------------------------------------------------------------------

def _select_top_k(coords: Tensor, scores: Tensor, k: int, hk: int, wk: int) -> tuple[Tensor, Tensor]:
    """coords (B, H, W, N, 2) in a key of (hk, wk), scores (B, H, W, N) -> the best k with distinct
    half-pixel cells, best first: (B, H, W, k, 2), (B, H, W, k). Where fewer than k cells are distinct,
    the best duplicates fill the rest (after every distinct one)."""
    cells = torch.round(coords * 2).long()
    cell_id = cells[..., 1] * (2 * wk + 3) + cells[..., 0]
    order = torch.nan_to_num(scores, nan=float("-inf")).argsort(dim=-1, descending=True)  # best first, NaN last
    ids_by_score = cell_id.gather(-1, order)
    # A stable sort by cell keeps, within each cell, the best-scoring candidate first.
    ids_sorted, by_cell = torch.sort(ids_by_score, dim=-1, stable=True)
    dup_sorted = torch.zeros_like(ids_sorted, dtype=torch.bool)
    dup_sorted[..., 1:] = ids_sorted[..., 1:] == ids_sorted[..., :-1]
    dup = torch.zeros_like(dup_sorted).scatter(-1, by_cell, dup_sorted)  # in score order
    # The distinct cells first, then the duplicates, each in score order.
    rank = torch.sort(dup.to(torch.uint8), dim=-1, stable=True).indices[..., :k]
    keep = order.gather(-1, rank)
    out_coords = coords.gather(-2, keep.unsqueeze(-1).expand(*keep.shape, 2))
    return out_coords, scores.gather(-1, keep)


select_top_k = torch.library.custom_op("cocosnet::select_top_k", _select_top_k, mutates_args=())


@select_top_k.register_kernel("cpu")
def _(coords: Tensor, scores: Tensor, k: int, hk: int, wk: int) -> tuple[Tensor, Tensor]:
    ext = _cpu_kernels(coords, scores)
    if ext is None:
        return _select_top_k(coords, scores, k, hk, wk)
    return tuple(ext.select_top_k(coords, scores, k))


@select_top_k.register_fake
def _(coords: Tensor, scores: Tensor, k: int, hk: int, wk: int) -> tuple[Tensor, Tensor]:
    kept = min(k, scores.shape[-1])
    return coords.new_empty((*coords.shape[:3], kept, 2)), scores.new_empty((*scores.shape[:3], kept))


# search_step ---------------------------------------------------------------------------------------

def clamp_coords(coords: Tensor, hk: int, wk: int) -> Tensor:
    """(x, y) positions (..., 2) clamped into a key of (hk, wk), in one pass."""
    return coords.clamp(min=coords.new_zeros(2), max=coords.new_tensor([wk - 1, hk - 1]))


def neighbour_candidates(coords: Tensor, m: int) -> Tensor:
    """The best m candidates of the 4 neighbours, shifted by the step to this pixel.

    coords (B, H, W, K, 2) -> (B, H, W, 4m, 2). At the border a pixel sees itself.
    """
    best = coords[..., :m, :]
    left = torch.cat([best[:, :, :1], best[:, :, :-1]], dim=2) + best.new_tensor([1.0, 0.0])
    right = torch.cat([best[:, :, 1:], best[:, :, -1:]], dim=2) - best.new_tensor([1.0, 0.0])
    up = torch.cat([best[:, :1], best[:, :-1]], dim=1) + best.new_tensor([0.0, 1.0])
    down = torch.cat([best[:, 1:], best[:, -1:]], dim=1) - best.new_tensor([0.0, 1.0])
    return torch.cat([left, right, up, down], dim=3)


def _search_step(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, jitter: Tensor,
                m: int) -> tuple[Tensor, Tensor]:
    """query (B, C, H, W), key (B, C, Hk, Wk), coords (B, H, W, k, 2) best first with scores (B, H, W, k),
    jitter (B, H, W, R, 2) (the random samples' offsets from the best candidate), m neighbour candidates
    per side -> the new top-k coords and scores. Candidates: the neighbours' best m shifted by one pixel,
    the best snapped to the pixel grid (exact matches sit on it), the best plus each jitter; clamped to
    the key, scored, de-duplicated with the current k and cut to k."""
    k = coords.shape[3]
    hk, wk = key.shape[-2:]
    best = coords[..., :1, :]
    new = torch.cat([neighbour_candidates(coords, m), torch.round(best), best + jitter], dim=3)
    new = clamp_coords(new, hk, wk)
    all_coords = torch.cat([coords, new], dim=3)
    all_scores = torch.cat([scores, candidate_scores(query, key, new)], dim=3)
    return select_top_k(all_coords, all_scores, k, hk, wk)


search_step = torch.library.custom_op("cocosnet::search_step", _search_step, mutates_args=())


@search_step.register_kernel("cpu")
def _(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, jitter: Tensor, m: int) -> tuple[Tensor, Tensor]:
    ext = _cpu_kernels(query, key, coords, scores)
    if ext is None:
        return _search_step(query, key, coords, scores, jitter, m)
    return tuple(ext.search_step(_channels_innermost(query), _channels_innermost(key), coords.contiguous(),
                                 scores.contiguous(), jitter.to(coords.dtype).contiguous(), m))


@search_step.register_fake
def _(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, jitter: Tensor, m: int) -> tuple[Tensor, Tensor]:
    return torch.empty_like(coords), torch.empty_like(scores)


# weighted_sample -----------------------------------------------------------------------------------

def _sampled_sum(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    return (sample_at(source, coords) * weights.unsqueeze(1)).sum(-1)


def _weighted_sample(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    """source (B, C, Hk, Wk), coords (B, H, W, K, 2) (x, y) in source pixels, weights (B, H, W, K) ->
    (B, C, H, W): sum_k weights[..., k] * the bilinear sample at coords[..., k, :]."""
    return _sampled_sum(source, coords, weights)


weighted_sample = torch.library.custom_op("cocosnet::weighted_sample", _weighted_sample, mutates_args=())


@weighted_sample.register_kernel("cpu")
def _(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    ext = _cpu_kernels(source, coords, weights)
    if ext is None:
        return _weighted_sample(source, coords, weights)
    out = ext.weighted_samples(_channels_innermost(source), coords.contiguous(), weights.contiguous())
    return out.permute(0, 3, 1, 2)  # channels-last (B, C, H, W)


@weighted_sample.register_fake
def _(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    out = source.new_empty((source.shape[0], source.shape[1], *coords.shape[1:3]))
    return out.contiguous(memory_format=_kernel_layout(source, coords, weights))


def _warp_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _warp_backward(ctx, grad: Tensor):
    """Recompute the samples a few candidates at a time (on every device: the samples and their grid
    would otherwise be kept from forward to backward, 80 MB for a 512^2 level's warp at k = 16)."""
    source, coords, weights = ctx.saved_tensors
    needs = ctx.needs_input_grad
    b, c, h, w = grad.shape
    chunk = memory.warp_chunk(b * c * h * w, coords.shape[3])
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
    return (g_source, torch.cat(g_coords, 3) if needs[1] else None, torch.cat(g_weights, 3) if needs[2] else None)


weighted_sample.register_autograd(_warp_backward, setup_context=_warp_setup)
