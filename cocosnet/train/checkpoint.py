"""The one file format for checkpoints and model files, checked on load.

A file is a `torch.save` dict: `format`, `stage`, `step`, `config` (the whole
params as built), `inputs` (what the stage was trained from, see `inputs.py`),
`model` (the state dict), and in a checkpoint also `trainer` (optimisers,
scalers, D, EMA), `torch_rng`, `history` and `samples` (the sample grids drawn so far, PNG
bytes by step, written back on resume). It ends with `sha256`, a digest
of everything else computed from the loaded values, so a flipped byte that
still unpickles is caught. The bytes depend only on the contents (no
timestamps, no git sha): the same training gives the same file. Loaded with
weights_only=True.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from cocosnet.config import Config, flatten, saved_config
from cocosnet.errors import CheckpointError, DataError
from cocosnet.io import atomic_write
from cocosnet.limits import regular_file
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.state_file import tensor_problem

FORMAT = "cocosnet-v2/1"
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for item in obj:
            _digest(item, h)
    else:
        h.update(f"V{obj!r}".encode())


def _tensors(obj, prefix: str = ""):
    """(dotted key, tensor) for every tensor nested in dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{i}]")


def content_sha256(state: dict) -> str:
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "sha256"}, h)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write `state` (with `format` and `sha256` added) to `path` atomically."""
    state = {"format": FORMAT, **state}
    state["sha256"] = content_sha256(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: Path) -> dict:
    """Load and verify a file written by `save_checkpoint`; CheckpointError names the file."""
    path = Path(path)
    hint = "delete it (or move it away) and rerun the stage that writes it"
    try:
        regular_file(path, "model or checkpoint file")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- torch raises RuntimeError/EOFError/UnpicklingError/...
        raise CheckpointError(f"{path}: unreadable, truncated or corrupt ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "sha256" not in state:
        raise CheckpointError(f"{path}: not a {FORMAT} model or checkpoint file; {hint}")
    model = state.get("model")
    try:
        problem = tensor_problem(dict(_tensors(state)), finite=False) or tensor_problem(
            model if isinstance(model, dict) else {})
        if problem:  # checked before the checksum, which reads every declared element
            raise CheckpointError(f"{path}: {problem}; {hint}")
        if content_sha256(state) != state["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt; {hint}")
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a {FORMAT} file; {hint}") from None
    return state


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's name (ckpt-00000040.pt -> 40)."""
    return int(_NAME.match(Path(path).name)[1])


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints directly in `directory`, oldest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(p for p in Path(directory).iterdir() if _NAME.match(p.name))


def prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)


def newest_good(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads and verifies. A bad one is renamed `*.corrupt` (kept for a
    look, never tried again) with a warning naming it, and the previous one is tried."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            bad = path.with_name(path.name + ".corrupt")
            path.replace(bad)
            warnings.warn(f"{exc}; moved to {bad.name}, trying the previous checkpoint", stacklevel=2)
    return None


def config_differences(saved: dict, current: dict, sections: tuple[str, ...]) -> list[str]:
    """Flattened keys under `sections` (top-level or dotted, like `model.align`) whose values differ."""
    keep = lambda k: any(k == s or k.startswith(s + ".") for s in sections)  # noqa: E731
    a = {k: v for k, v in flatten(saved).items() if keep(k)}
    b = {k: v for k, v in flatten(current).items() if keep(k)}
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 -- tuples come back as lists
    return sorted(k for k in set(a) | set(b) if norm(a.get(k)) != norm(b.get(k)))


def check_compatible(state: dict, current: dict, sections: tuple[str, ...], source: Path) -> None:
    saved = saved_config(state["config"])
    diff = config_differences(saved, current, sections)
    if diff:
        shown = ", ".join(f"{k} ({flatten(saved).get(k)!r} -> {flatten(current).get(k)!r})"
                          for k in diff[:8])
        raise CheckpointError(f"{source}: built from an incompatible config; keys that differ: {shown}")


def save_model(path: Path, model: torch.nn.Module, *, config: dict, stage: str, step: int, inputs: dict) -> Path:
    """A final model file: the checkpoint format without the training state."""
    return save_checkpoint(path, {"stage": stage, "step": step, "config": config, "inputs": inputs,
                                  "model": model.state_dict()})


def load_model(path: Path, cfg: Config, *, sections: tuple[str, ...] = ("model",)) -> tuple[CoCosNet, dict]:
    """(CoCosNet, file state) from a model file; refuses one built with different `sections`."""
    state = load_checkpoint(path)
    check_compatible(state, asdict(cfg), sections, path)
    model = CoCosNet.from_config(cfg)
    model.load_state_dict(state["model"])
    return model, state


MATCHER_SECTIONS = ("model.align", "model.correspondence")  # what a pretrain model's weights depend on


def matcher_weights(state: dict, cfg: Config, source: Path) -> dict:
    """The matcher's state dict from a model file's `state` (read from `source`) whose matcher config
    equals `cfg`'s (its generator may differ: a pretrain model's is untrained and unused)."""
    check_compatible(state, asdict(cfg), MATCHER_SECTIONS, source)
    return {k.removeprefix("matcher."): v for k, v in state["model"].items() if k.startswith("matcher.")}


GENERATION_SECTIONS = ("model.align", "model.correspondence", "model.generator")


def refinable_weights(state: dict, cfg: Config, source: Path) -> dict:
    """The matcher's and generator's state dict from a trained or imported model file's `state` (read
    from `source`) whose matcher and generator config equal `cfg`'s; its refiner, if any, is left out
    (a stage starting from it trains its own, or none)."""
    check_compatible(state, asdict(cfg), GENERATION_SECTIONS, source)
    return {k: v for k, v in state["model"].items() if not k.startswith("refiner.")}
