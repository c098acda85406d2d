"""Reading a weights file someone else made: a state dict (key -> tensor), or one under "state_dict"."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from cocosnet.errors import WeightsError


def read_state_dict(path: str | Path, *, what: str = "state dict", hint: str = "") -> dict[str, Tensor]:
    """Load `path` with weights_only=True. Any failure is a WeightsError that names the file, says it is not
    a readable `what`, and ends with `hint` (where to get the right file)."""
    path = Path(path)
    tail = f". {hint}" if hint else ""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError/EOFError/UnpicklingError/...
        raise WeightsError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160]}){tail}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a {what} (key -> tensor), got {type(state).__name__}{tail}")
    return dict(state)
