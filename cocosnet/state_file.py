"""Reading a weights file someone else made: a state dict (key -> tensor), or one under "state_dict", with
every tensor sound: no more elements than its stored bytes hold (a stride-0 shape costs a few bytes in
the file and gigabytes once used) and no NaN or infinity (a model that draws an all-black image)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from cocosnet.errors import DataError, WeightsError
from cocosnet.limits import regular_file


def read_state_dict(path: str | Path, *, what: str = "state dict", hint: str = "") -> dict[str, Tensor]:
    """Load `path` with weights_only=True. Any failure is a WeightsError that names the file, says it is not
    a readable `what`, and ends with `hint` (where to get the right file)."""
    path = Path(path)
    tail = f". {hint}" if hint else ""
    try:
        regular_file(path, what)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except DataError as exc:
        raise WeightsError(f"{exc}{tail}") from None
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError/EOFError/UnpicklingError/...
        raise WeightsError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160]}){tail}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a {what} (key -> tensor), got {type(state).__name__}{tail}")
    problem = tensor_problem(state)
    if problem:
        raise WeightsError(f"{path}: {problem}; not a usable {what}{tail}")
    return dict(state)


def tensor_problem(state: Mapping, *, finite: bool = True) -> str | None:
    """What is wrong with the first unsound tensor of `state` (see the module doc; NaN and infinity only
    with `finite`), or None."""
    for key, tensor in state.items():
        if not isinstance(tensor, Tensor):
            continue
        stored = tensor.untyped_storage().nbytes()
        if tensor.numel() * tensor.element_size() > stored:
            return (f"tensor {str(key)[:80]!r} declares shape {tuple(tensor.shape)[:8]} but its storage holds "
                    f"{stored} bytes")
        if finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {str(key)[:80]!r} holds NaN or infinite values"
    return None
