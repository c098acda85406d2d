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
from cocosnet.models.blocks import resize_to
from cocosnet.models.patchmatch import Generators, PatchMatchGRU


@dataclass
class CorrespondenceOutput:
    warps: list[Tensor]  # per level, coarse to fine: (B, 3, h_l, w_l)
    cycle_warp: Tensor | None  # (B, 3, h_0, w_0) in training, else None
    coords: list[Tensor]  # per level: (B, h_l, w_l, k, 2) exemplar (x, y) in level pixels, best first
    scores: list[Tensor]  # per level: (B, h_l, w_l, k)


def dense_match(query: Tensor, key: Tensor, key_colors: Tensor, *, temperature: float, k: int,
                cycle: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Full matching at the coarsest level.

    query, key (B, C, h, w) normalised; key_colors (B, 3, h, w). Returns the
    softmax warp (B, 3, h, w), the cycle warp (or None), and the top-k exemplar
    positions (B, h, w, k, 2) with their similarities (B, h, w, k).
    """
    b, c, h, w = query.shape
    hk, wk = key.shape[-2:]
    sim = query.flatten(2).transpose(1, 2) @ key.flatten(2)  # (B, hw, hk*wk)
    attn = torch.softmax(sim / temperature, dim=-1)
    warp = (attn @ key_colors.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, 3, h, w)
    cycle_warp = None
    if cycle:
        back = torch.softmax(sim / temperature, dim=1).transpose(1, 2)  # (B, hk*wk, hw)
        cycle_warp = (back @ warp.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, 3, hk, wk)
    scores, index = sim.topk(min(k, sim.shape[-1]), dim=-1)  # (B, hw, k)
    coords = torch.stack([index % wk, index // wk], dim=-1).to(query.dtype)
    return warp, cycle_warp, coords.view(b, h, w, -1, 2), scores.view(b, h, w, -1)


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
                          search_samples=samples)
            for k, iters, gru, stride, radius, samples in zip(
                cfg.num_candidates, cfg.iters, cfg.gru, cfg.update_stride, cfg.search_radius, cfg.search_samples)])

    def forward(self, query: list[Tensor], key: list[Tensor], exemplar: Tensor, *, cycle: bool = False,
                generator: Generators = None) -> CorrespondenceOutput:
        """query/key: matching features per level, coarse to fine; exemplar (B, 3, H, W) in [-1, 1]."""
        colors = [resize_to(exemplar, k.shape[-2:], "area") for k in key]
        warp, cycle_warp, coords, scores = dense_match(query[0], key[0], colors[0], temperature=self.temperature,
                                                       k=self.handed_down[0], cycle=cycle)
        out = CorrespondenceOutput([warp], cycle_warp, [coords], [scores])
        for i, level in enumerate(self.levels, start=1):
            handed = coords[..., :self.handed_down[i - 1], :].detach()  # the best of the coarser level
            init = upsample_candidates(handed, tuple(query[i].shape[-2:]), tuple(key[i].shape[-2:]),
                                       tuple(key[i - 1].shape[-2:]))
            coords, scores, warp = level(query[i], key[i], colors[i], init=init, generator=generator)
            out.warps.append(warp)
            out.coords.append(coords)
            out.scores.append(scores)
        return out
