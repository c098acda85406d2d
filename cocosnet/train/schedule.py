"""Learning-rate schedule as a pure function, and the TTUR split.

The official trainer defines `update_learning_rate` twice; the second wins and
sets G and D to the same LR after the first epoch, silently dropping TTUR
(see docs/training.md). Here TTUR holds for the whole run.
"""

from __future__ import annotations


def lr_at(step: int, *, base: float, total: int, decay_start: int) -> float:
    """Constant `base`, then linear decay to 0 from `decay_start` to `total` (decay_start < 0: constant)."""
    if decay_start < 0 or step < decay_start:
        return base
    span = max(1, total - decay_start)
    return base * max(0.0, 1.0 - (step - decay_start) / span)


def ttur(lr: float) -> tuple[float, float]:
    """(G lr, D lr) = (lr / 2, 2 lr)."""
    return lr / 2, lr * 2
