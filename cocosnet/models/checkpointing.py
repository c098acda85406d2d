"""Activation checkpointing where it pays: recompute in backward instead of keeping, only for
large activations. Below the threshold the recomputation is pure cost (bench/checkpointing.py:
the demo pretrain step, reports/bench/checkpointing.json); above it, memory is what limits the
full-resolution network (bench/matcher.py)."""

from __future__ import annotations

import torch

# Checkpoint a call only when what backward would keep has at least this many elements.
CHECKPOINT_MIN_ELEMENTS = 2**24


def maybe_checkpoint(fn, *args, elements: int):
    """fn(*args), checkpointed when `elements` (the size of what backward would keep) is large and
    autograd is recording."""
    if elements >= CHECKPOINT_MIN_ELEMENTS and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
