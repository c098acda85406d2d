"""Choosing the checkpoint to resume, without ever deleting one.

The newest good checkpoint in `ckpt_dir` is resumed only when it was trained
from the same inputs (`inputs.py`). Otherwise every checkpoint of the folder is
moved to `<ckpt_dir parent>/superseded/<stage>/<inputs key>/` with a `reason.json`
(beside the checkpoint folder, not in it: DVC tracks that folder, and a
workspace's history must not change its hash), and the run
starts afresh, unless a superseded set from exactly the current inputs exists:
that one is moved back and resumed (switching a param back and forth loses
nothing). A corrupt checkpoint is renamed `*.corrupt` and the previous one used.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from cocosnet.io import atomic_write_json
from cocosnet.train.checkpoint import list_checkpoints, newest_good
from cocosnet.train.inputs import inputs_differences, inputs_key

SUPERSEDED = "superseded"


def superseded_dir(ckpt_dir: Path) -> Path:
    """checkpoints/pretrain -> checkpoints/superseded/pretrain."""
    return ckpt_dir.parent / SUPERSEDED / ckpt_dir.name
REASON = "reason.json"


def _move_all(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and (path.name.startswith("ckpt-") or path.name == REASON):
            if path.name == REASON:
                path.unlink()
            else:
                shutil.move(str(path), dst / path.name)


def supersede(ckpt_dir: Path, saved: dict, reasons: list[str]) -> Path:
    """Move the checkpoints of `ckpt_dir` aside, under the key of the inputs they were trained from."""
    dest = superseded_dir(ckpt_dir) / inputs_key(saved)
    _move_all(ckpt_dir, dest)
    atomic_write_json(dest / REASON, {"superseded_because": reasons, "inputs": saved})
    return dest


def choose_resume(ckpt_dir: Path, inputs: dict, *, stage: str) -> dict | None:
    """The checkpoint state to resume for `inputs`, or None to start afresh (see the module doc).
    Call on the main rank only; other ranks then load `list_checkpoints(ckpt_dir)[-1]`."""
    ckpt_dir = Path(ckpt_dir)
    found = newest_good(ckpt_dir)
    if found is not None:
        path, state = found
        reasons = inputs_differences(state.get("inputs", {}), inputs)
        if not reasons:
            return state
        dest = supersede(ckpt_dir, state.get("inputs", {}), reasons)
        warnings.warn(f"{stage}: {path} was trained from other inputs ({'; '.join(reasons[:6])}); its checkpoints "
                      f"were moved to {dest} and {stage} starts afresh", stacklevel=2)
    elif list(ckpt_dir.glob("ckpt-*.pt.corrupt")):
        warnings.warn(f"{stage}: no good checkpoint left in {ckpt_dir}; starting afresh", stacklevel=2)
    earlier = superseded_dir(ckpt_dir) / inputs_key(inputs)
    if earlier.is_dir() and list_checkpoints(earlier):
        _move_all(earlier, ckpt_dir)
        shutil.rmtree(earlier)
        warnings.warn(f"{stage}: resuming the checkpoints of these exact inputs from {earlier}", stacklevel=2)
        return choose_resume(ckpt_dir, inputs, stage=stage)
    return None
