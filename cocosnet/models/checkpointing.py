"""Activation checkpointing where it pays: recompute in backward instead of keeping, only for
large activations. Below the threshold the recomputation is pure cost (bench/checkpointing.py:
the demo pretrain step, reports/bench/checkpointing.json); above it, memory is what limits the
full-resolution network (bench/matcher.py)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

# Checkpoint a call only when what backward would keep has at least this many elements.
CHECKPOINT_MIN_ELEMENTS = 2**24

_state = threading.local()  # backward recomputes on the autograd engine's threads


def maybe_checkpoint(fn, *args, elements: int):
    """fn(*args), checkpointed when `elements` (the size of what backward would keep) is large and
    autograd is recording. Calls inside a checkpointed call are not checkpointed again: they are
    recomputed once already, with the outer call."""
    if elements >= CHECKPOINT_MIN_ELEMENTS and torch.is_grad_enabled() and not getattr(_state, "inside", False):
        return torch.utils.checkpoint.checkpoint(_inside(fn), *args, use_reentrant=False)
    return fn(*args)


def _inside(fn):
    def run(*args):
        with _checkpointed():
            return fn(*args)
    return run


@contextmanager
def _checkpointed():
    before = getattr(_state, "inside", False)
    _state.inside = True
    try:
        yield
    finally:
        _state.inside = before
