"""Where the network's memory and time go, in one place: activation checkpointing, tiles and chunks,
and tensor layouts. Every choice here changes where tensors live or when they are computed, never
what is computed (equal up to float rounding: tests/test_memory.py runs the network both ways), so
the modules' `forward`s read as the math and call these functions where a choice is made.

One switch: COCOSNET_MEMORY_POLICY=0 (or `with memory.plain():`) runs every module plainly: nothing
checkpointed, tiled or chunked, the default layout. Memory then grows with the full activations; the
policy is what lets the paper-size network train in 6 GB and infer at 1024^2 in 4 GB on a CPU
(docs/performance.md).

Sizes are in elements. A module's "kept" count estimates what backward would keep of its activations;
a call is checkpointed (recomputed in backward) when that is at least CHECKPOINT_MIN_ELEMENTS, below
which the recomputation is pure cost (docs/decisions/2026-11-29-activation-checkpointing.md).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import torch
from torch import Tensor

ENV = "COCOSNET_MEMORY_POLICY"

CHECKPOINT_MIN_ELEMENTS = 2**24  # checkpoint a call only when backward would keep this much
SCORE_CHUNK = 8  # candidates the tensor version of the scores samples at once: O(B*C*H*W*SCORE_CHUNK)
WARP_CHUNK_ELEMENTS = 2**22  # samples a warp's backward builds at once (B*C*H*W*candidates)
DENSE_CHUNK_ELEMENTS = 2**26  # similarities per query chunk of the dense level without autograd (256 MB fp32)
SPADE_TILE_ELEMENTS = 2**22  # hidden-map elements per row tile of an inference SPADE

# What a module keeps for backward, per element of its input (or, for the GRU update, per pixel of
# its grid): the estimates that decide which calls are checkpointed.
ENCODER_MAPS_KEPT = 2  # an encoder layer's activation and conv input
OUTPUT_MAPS_KEPT = 4  # an alignment level's output normalisations and projection
BRANCH_MAPS_KEPT = 3  # a SPADE branch besides its SPADE's 3 hidden maps (norm, activation, pad)
RESIDUAL_MAPS_KEPT = 8  # a residual block (pads, convs, norms, PReLUs)
# Measured: 1264 at k = 16, 1176 at k = 8 (tests/test_patchmatch.py checks it).
UPDATE_CHANNELS_KEPT = 1232

_state = threading.local()  # backward recomputes on the autograd engine's threads


def active() -> bool:
    """Whether the policy applies (COCOSNET_MEMORY_POLICY is not 0 and no `plain()` block is open)."""
    return os.environ.get(ENV, "1") != "0" and not getattr(_state, "plain", False)


@contextmanager
def plain():
    """Run the block with the policy off, in this thread."""
    before = getattr(_state, "plain", False)
    _state.plain = True
    try:
        yield
    finally:
        _state.plain = before


def checkpoint(fn, *args, elements: int):
    """fn(*args), checkpointed when `elements` (what backward would keep) is large and autograd is
    recording. Calls inside a checkpointed call are not checkpointed again: they are recomputed once
    already, with the outer call."""
    if (elements >= CHECKPOINT_MIN_ELEMENTS and torch.is_grad_enabled() and active()
            and not getattr(_state, "inside", False)):
        return torch.utils.checkpoint.checkpoint(_inside(fn), *args, use_reentrant=False)
    return fn(*args)


def _inside(fn):
    def run(*args):
        before = getattr(_state, "inside", False)
        _state.inside = True
        try:
            return fn(*args)
        finally:
            _state.inside = before
    return run


def large(elements: int) -> bool:
    """Whether a call keeping `elements` is one the policy treats as large (checkpointed or tiled)."""
    return elements >= CHECKPOINT_MIN_ELEMENTS and active()


def inference_layout(x: Tensor) -> Tensor:
    """x stored channels-last for a forward-only pass on the CPU: its convolutions run 1.4-1.8x faster
    that way here (docs/performance.md), and every op of the alignment U-Nets keeps the layout."""
    if active() and not torch.is_grad_enabled() and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


def gru_update(update, h: Tensor, corr: Tensor, flow: Tensor, *, training: bool):
    """update(h, corr, flow), with this device's choices: in training, checkpointed when large (its
    activations are about UPDATE_CHANNELS_KEPT floats per grid pixel), and channels-last under CPU bf16
    autocast, where the convolutions run 15% faster that way, backward included (fp32 ones do not);
    without autograd on the CPU channels-last, about 30% faster forward at 512^2."""
    if not active():
        return update(h, corr, flow)
    on_cpu = h.device.type == "cpu"
    if training and torch.is_grad_enabled():
        if on_cpu and torch.is_autocast_enabled("cpu"):
            h, corr, flow = (t.contiguous(memory_format=torch.channels_last) for t in (h, corr, flow))
        return checkpoint(update, h, corr, flow, elements=h.numel() // h.shape[1] * UPDATE_CHANNELS_KEPT)
    if not torch.is_grad_enabled() and on_cpu:
        return update(*(t.contiguous(memory_format=torch.channels_last) for t in (h, corr, flow)))
    return update(h, corr, flow)


def dense_rows(query_pixels: int, batch: int, key_pixels: int, *, cycle: bool) -> int | None:
    """Query pixels per chunk of the dense level's similarity matrix, or None to build it whole: chunks
    only without autograd and without the cycle warp (then each query row stands alone)."""
    rows = max(1, DENSE_CHUNK_ELEMENTS // (batch * key_pixels))
    if active() and not cycle and not torch.is_grad_enabled() and rows < query_pixels:
        return rows
    return None


def spade_tile_rows(hidden_elements: int, height: int, width: int) -> int | None:
    """Output rows per tile of a forward-only SPADE whose hidden maps hold `hidden_elements`, or None to
    run it whole: large calls without autograd are tiled, so no full-size hidden map exists."""
    if large(hidden_elements * 3) and min(height, width) > 1 and not torch.is_grad_enabled():
        return max(2, SPADE_TILE_ELEMENTS * height // hidden_elements)
    return None


def score_chunk(candidates: int) -> int:
    """Candidates the tensor version of the scores samples at once."""
    return SCORE_CHUNK if active() else max(candidates, 1)


def warp_chunk(elements_per_candidate: int, candidates: int) -> int:
    """Candidates a warp's backward samples at once."""
    return max(1, WARP_CHUNK_ELEMENTS // elements_per_candidate) if active() else max(candidates, 1)
