"""Contextual loss (h = 0.1) between generated and exemplar VGG features, computed in row chunks.

For each generated position i, with d_ij = 1 - cos(x_i, y_j) after centring
both sets on the exemplar's spatial mean: d~_ij = d_ij / (min_j d_ij + 1e-3),
w_ij = exp((1 - d~_ij) / h), CX_i = max_j w_ij / sum_j w_ij, and the loss is
-log(mean_i CX_i), averaged over the batch. Every row i is independent, so
rows are processed `chunk` at a time: memory O(chunk x N) instead of O(N^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _prepare(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    mu = y.mean(dim=(2, 3), keepdim=True)
    x = F.normalize((x - mu).flatten(2), dim=1)  # (B, C, N)
    y = F.normalize((y - mu).flatten(2), dim=1)  # (B, C, M)
    return x, y


def _row_cx(x_rows: Tensor, y: Tensor, h: float) -> Tensor:
    """x_rows (B, C, n), y (B, C, M) -> CX_i (B, n)."""
    d = 1 - x_rows.transpose(1, 2) @ y  # (B, n, M)
    d_rel = d / (d.min(dim=-1, keepdim=True).values + 1e-3)
    logits = (1 - d_rel) / h
    # max_j softmax_j(logits) = exp(max - logsumexp), computed stably.
    return torch.exp(logits.max(dim=-1).values - torch.logsumexp(logits, dim=-1))


def contextual_loss(x: Tensor, y: Tensor, *, h: float = 0.1, chunk: int = 1024) -> Tensor:
    """x (B, C, H, W) generated features, y (B, C, H', W') exemplar features -> scalar."""
    xs, ys = _prepare(x, y)
    cx = torch.cat([_row_cx(rows, ys, h) for rows in xs.split(chunk, dim=2)], dim=1)  # (B, N)
    return -torch.log(cx.mean(dim=1) + 1e-5).mean()


def contextual_loss_naive(x: Tensor, y: Tensor, *, h: float = 0.1) -> Tensor:
    """The full-matrix form, for testing the chunked one."""
    xs, ys = _prepare(x, y)
    d = 1 - xs.transpose(1, 2) @ ys
    d_rel = d / (d.min(dim=-1, keepdim=True).values + 1e-3)
    w = torch.exp((1 - d_rel) / h)
    cx = (w / w.sum(dim=-1, keepdim=True)).max(dim=-1).values
    return -torch.log(cx.mean(dim=1) + 1e-5).mean()
