"""One self-describing checkpoint file per save, written atomically, the last K kept.

Contents: model, discriminator, optimisers, scalers, EMA, step, RNG state, the
config it was built from, the code version. Loaded with weights_only=True.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import torch

from cocosnet import __version__
from cocosnet.config import flatten
from cocosnet.io import atomic_write_bytes

_NAME = re.compile(r"ckpt-(\d{8})\.pt$")
# Keys that may change between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_last", "log_every", "sample_every", "workers")


class CheckpointMismatch(ValueError):
    """A checkpoint built from a config that differs in keys that matter."""


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def save_checkpoint(directory: Path, step: int, state: dict, *, keep_last: int) -> Path:
    """Write `ckpt-<step>.pt` atomically and delete all but the newest `keep_last`."""
    directory = Path(directory)
    buf = io.BytesIO()
    torch.save({**state, "step": step, "code_version": code_version()}, buf)
    path = directory / f"ckpt-{step:08d}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(p for p in Path(directory).iterdir() if _NAME.search(p.name))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def config_differences(saved: dict, current: dict, sections: tuple[str, ...]) -> list[str]:
    """Flattened keys under `sections` whose values differ (ignoring RESUMABLE_CHANGES)."""
    a = {k: v for k, v in flatten(saved).items() if k.split(".")[0] in sections}
    b = {k: v for k, v in flatten(current).items() if k.split(".")[0] in sections}
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 -- tuples come back as lists
    return sorted(k for k in set(a) | set(b)
                  if k.split(".")[-1] not in RESUMABLE_CHANGES and norm(a.get(k)) != norm(b.get(k)))


def check_compatible(ckpt: dict, current: dict, sections: tuple[str, ...], source: Path) -> None:
    diff = config_differences(ckpt["config"], current, sections)
    if diff:
        shown = ", ".join(f"{k} ({flatten(ckpt['config']).get(k)!r} -> {flatten(current).get(k)!r})" for k in diff[:8])
        raise CheckpointMismatch(f"{source}: built from an incompatible config; keys that differ: {shown}")
