"""Hierarchical correspondence: dense top-k at the coarsest level, PatchMatch + ConvGRU above.

Level 0 matches every target pixel against every exemplar pixel (cosine / tau)
and warps with the softmax; in training it also builds the cycle warp back to
the exemplar frame. Its top-k exemplar positions, scaled to the next level,
initialise that level's PatchMatch; `handed_down` says how many (the official
code hands down only #0; the demo hands down all k). Each finer level hands its
best candidates on the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cocosnet.config import CorrespondenceConfig
from cocosnet.models import memory
from cocosnet.models.blocks import resize_to
from cocosnet.models.patchmatch import Generators, PatchMatchGRU


@dataclass
class CorrespondenceOutput:
    warps: list[Tensor]  # per level, coarse to fine: (B, 3, h_l, w_l)
    cycle_warp: Tensor | None  # (B, 3, h_0, w_0) in training, else None
    coords: list[Tensor]  # per level: (B, h_l, w_l, k, 2) exemplar (x, y) in level pixels, best first
    scores: list[Tensor]  # per level: (B, h_l, w_l, k)
    extra_warps: list[Tensor] | None = None  # per level: the `extra` maps warped like the colours
    features: list[tuple[Tensor, Tensor]] | None = None  # in training, per level: the (query, key) scored
    head_scores: list[Tensor] | None = None  # in training, per level: `scores` with the cosines detached
    trails: list[list[Tensor]] | None = None  # in training, per level: the GRU's candidates after each iteration


def dense_match(query: Tensor, key: Tensor, key_colors: Tensor, *, temperature: float, k: int,
                cycle: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Full matching at the coarsest level.

    query, key (B, C, h, w) normalised; key_colors (B, c, h, w). Returns the
    softmax warp (B, c, h, w), the cycle warp (or None), and the top-k exemplar
    positions (B, h, w, k, 2) with their similarities (B, h, w, k).

    Without autograd and without the cycle, each query pixel's row of similarities stands alone, so
    a large matrix (the official network at 1024^2 matches 128^2 against 128^2: 1 GB, and as much
    again for its softmax) is built in chunks of query rows (models/memory.py); equal up to float rounding.
    """
    b, _, h, w = query.shape
    hk, wk = key.shape[-2:]
    rows = memory.dense_rows(h * w, b, hk * wk, cycle=cycle)
    if rows is not None:
        warp, coords, scores = _dense_match_chunked(query, key, key_colors, temperature=temperature, k=k, rows=rows)
        return warp, None, coords, scores
    c = key_colors.shape[1]
    sim = query.flatten(2).transpose(1, 2) @ key.flatten(2)  # (B, hw, hk*wk)
    attn = torch.softmax(sim / temperature, dim=-1)
    warp = (attn @ key_colors.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
    cycle_warp = None
    if cycle:
        back = torch.softmax(sim / temperature, dim=1).transpose(1, 2)  # (B, hk*wk, hw)
        cycle_warp = (back @ warp.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hk, wk)
    scores, index = sim.topk(min(k, sim.shape[-1]), dim=-1)  # (B, hw, k)
    return warp, cycle_warp, _positions(index, wk, query), scores.view(b, h, w, -1)


def _positions(index: Tensor, wk: int, query: Tensor) -> Tensor:
    """Flat key indices (B, hw, k) -> (x, y) positions (B, h, w, k, 2) in the query's dtype."""
    b, _, h, w = query.shape
    return torch.stack([index % wk, index // wk], dim=-1).to(query.dtype).view(b, h, w, -1, 2)


def _dense_match_chunked(query: Tensor, key: Tensor, key_colors: Tensor, *, temperature: float, k: int,
                         rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """`dense_match` without the cycle, `rows` query pixels at a time: warp, coords, scores."""
    b, _, h, w = query.shape
    wk = key.shape[-1]
    c = key_colors.shape[1]
    keys = key.flatten(2)  # (B, C, hk*wk)
    colors = key_colors.flatten(2).transpose(1, 2)  # (B, hk*wk, c)
    warps, scores, index = [], [], []
    for chunk in query.flatten(2).transpose(1, 2).split(rows, dim=1):  # (B, rows, C)
        sim = chunk @ keys  # (B, rows, hk*wk)
        top = sim.topk(min(k, sim.shape[-1]), dim=-1)
        scores.append(top.values)
        index.append(top.indices)
        warps.append(torch.softmax(sim.div_(temperature), dim=-1) @ colors)  # (B, rows, c)
    warp = torch.cat(warps, dim=1).transpose(1, 2).reshape(b, c, h, w)
    return warp, _positions(torch.cat(index, dim=1), wk, query), torch.cat(scores, dim=1).view(b, h, w, -1)


def upsample_candidates(coords: Tensor, size: tuple[int, int], key_size: tuple[int, int],
                        prev_key_size: tuple[int, int]) -> Tensor:
    """Hand candidates (B, h, w, k, 2) to a finer level of (H, W): every child pixel
    takes its parent's k candidates, mapped to the finer key's pixel frame."""
    b, h, w, k, _ = coords.shape
    scale = coords.new_tensor([key_size[1] / prev_key_size[1], key_size[0] / prev_key_size[0]])
    mapped = (coords + 0.5) * scale - 0.5
    flat = mapped.permute(0, 3, 4, 1, 2).reshape(b, k * 2, h, w)
    up = resize_to(flat, size, "nearest")
    return up.view(b, k, 2, *size).permute(0, 3, 4, 1, 2).contiguous()


class HierarchicalCorrespondence(nn.Module):
    """Level 0 dense, then one PatchMatchGRU per finer level (a ModuleList over levels), each built from
    its entries of the config's per-level tuples."""

    def __init__(self, match_channels: int, cfg: CorrespondenceConfig):
        super().__init__()
        self.temperature, self.handed_down = cfg.temperature, cfg.handed_down
        self.levels = nn.ModuleList([
            PatchMatchGRU(match_channels, num_candidates=k, iters=iters, hidden_dim=cfg.gru_hidden,
                          temperature=cfg.temperature, update_stride=stride, gru=gru, search_radius=radius,
                          search_samples=samples, rerank=rerank, gru_reads_detached=cfg.rank_grad == "head",
                          lookup=cfg.lookup)
            for k, iters, gru, stride, radius, samples, rerank in zip(
                cfg.num_candidates, cfg.iters, cfg.gru, cfg.update_stride, cfg.search_radius, cfg.search_samples,
                cfg.rerank)])

    def forward(self, query: list[Tensor], key: list[Tensor], exemplar: Tensor, *, cycle: bool = False,
                extra: list[Tensor] | None = None, generator: Generators = None) -> CorrespondenceOutput:
        """query/key: matching features per level, coarse to fine; exemplar (B, 3, H, W) in [-1, 1].

        extra: optional maps in the exemplar frame, one per level at the key's size (B, c, h_l, w_l),
        warped with the same weights as the colours (into `extra_warps`).
        """
        # Matching stays fp32 under autocast (train/precision.py): the similarities are divided by the
        # temperature (0.01), and the CPU search kernels read fp32. Only the GRU's convolutions autocast.
        query, key = [q.float() for q in query], [k.float() for k in key]
        colors = [resize_to(exemplar.float(), k.shape[-2:], "area") for k in key]
        if extra is not None:
            colors = [torch.cat([c, e.float()], dim=1) for c, e in zip(colors, extra)]
        with torch.autocast(exemplar.device.type, enabled=False):
            warp, cycle_warp, coords, scores = dense_match(query[0], key[0], colors[0], temperature=self.temperature,
                                                           k=self.handed_down[0], cycle=cycle)
        warps, coords_out, scores_out, heads, trails = [warp], [coords], [scores], [scores.detach()], [[]]
        for i, level in enumerate(self.levels, start=1):
            handed = coords[..., :self.handed_down[i - 1], :].detach()  # the best of the coarser level
            init = upsample_candidates(handed, tuple(query[i].shape[-2:]), tuple(key[i].shape[-2:]),
                                       tuple(key[i - 1].shape[-2:]))
            coords, scores, warp, details = level(query[i], key[i], colors[i], init=init, generator=generator,
                                                  details=True)
            warps.append(warp)
            coords_out.append(coords)
            scores_out.append(scores)
            heads.append(details.head_scores)
            trails.append(details.trail)
        return CorrespondenceOutput([w[:, :3] for w in warps], None if cycle_warp is None else cycle_warp[:, :3],
                                    coords_out, scores_out,
                                    None if extra is None else [w[:, 3:] for w in warps],
                                    list(zip(query, key)) if self.training else None,  # for the rank_truth term
                                    heads if self.training else None, trails if self.training else None)
