"""RAFT-style separable ConvGRU update block that moves PatchMatch candidates.

Sizes are explicit; `num_candidates` comes from the root, never a constant here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SepConvGRU(nn.Module):
    """A GRU step with 1x5 gates, then one with 5x1 gates (RAFT)."""

    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        cat = hidden_dim + input_dim
        self.convz = nn.ModuleList([nn.Conv2d(cat, hidden_dim, k, padding=p) for k, p in (((1, 5), (0, 2)), ((5, 1), (2, 0)))])
        self.convr = nn.ModuleList([nn.Conv2d(cat, hidden_dim, k, padding=p) for k, p in (((1, 5), (0, 2)), ((5, 1), (2, 0)))])
        self.convq = nn.ModuleList([nn.Conv2d(cat, hidden_dim, k, padding=p) for k, p in (((1, 5), (0, 2)), ((5, 1), (2, 0)))])

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        """h (B, hidden, H, W), x (B, input, H, W) -> new h."""
        for convz, convr, convq in zip(self.convz, self.convr, self.convq):
            hx = torch.cat([h, x], dim=1)
            z, r = torch.sigmoid(convz(hx)), torch.sigmoid(convr(hx))
            q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
            h = (1 - z) * h + z * q
        return h


class UpdateBlock(nn.Module):
    """Candidate scores + offsets -> motion features -> SepConvGRU -> continuous offset deltas, and with
    `rerank` a score bias per candidate (zero at initialisation, so training starts from the search's ranking).
    With `window` > 0 the correlation input also holds that many cost values per candidate (the lookup)."""

    def __init__(self, num_candidates: int, hidden_dim: int = 32, motion_dim: int = 64, *, rerank: bool = False,
                 window: int = 0):
        super().__init__()
        k = num_candidates
        relu = nn.ReLU(inplace=False)
        self.corr_enc = nn.Sequential(nn.Conv2d(k * (1 + window), motion_dim, 1), relu,
                                      nn.Conv2d(motion_dim, motion_dim, 3, padding=1), relu)
        self.flow_enc = nn.Sequential(nn.Conv2d(2 * k, motion_dim, 7, padding=3), relu,
                                      nn.Conv2d(motion_dim, motion_dim, 3, padding=1), relu)
        self.motion = nn.Sequential(nn.Conv2d(2 * motion_dim, hidden_dim, 3, padding=1), relu)
        self.gru = SepConvGRU(hidden_dim, hidden_dim + 2 * k)
        self.head = nn.Sequential(nn.Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1), relu,
                                  nn.Conv2d(2 * hidden_dim, 2 * k, 3, padding=1))
        self.rerank = None
        if rerank:
            self.rerank = nn.Sequential(nn.Conv2d(hidden_dim, 2 * hidden_dim, 3, padding=1), relu,
                                        nn.Conv2d(2 * hidden_dim, k, 3, padding=1))
            nn.init.zeros_(self.rerank[-1].weight)
            nn.init.zeros_(self.rerank[-1].bias)

    def forward(self, h: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """h (B, hidden, H, W), corr (B, k (1 + window), H, W), flow (B, 2k, H, W)
        -> (h, delta (B, 2k, H, W), score bias (B, k, H, W) or None)."""
        motion = self.motion(torch.cat([self.corr_enc(corr), self.flow_enc(flow)], dim=1))
        h = self.gru(h, torch.cat([motion, flow], dim=1))
        return h, self.head(h), None if self.rerank is None else self.rerank(h)
