"""Choosing the checkpoint to resume, without ever deleting one.

The newest good checkpoint in `ckpt_dir` is resumed only when it was trained
from the same inputs (`inputs.py`). Otherwise every checkpoint of the folder is
moved to `<ckpt_dir parent>/superseded/<stage>/<inputs key>/` with a `reason.json`
(beside the checkpoint folder, not in it: DVC tracks that folder, and a
workspace's history must not change its hash), and the run
starts afresh, unless a superseded set from exactly the current inputs exists:
that one is moved back and resumed (switching a param back and forth loses
nothing). A corrupt checkpoint is renamed `*.corrupt` and the previous one used.

A run asked for fewer steps than its checkpoints have done must still return the
model at its own step count: checkpoints past `max_step` are moved aside into the
same folder as a superseded set of these inputs (a later, longer run takes them
back), and the run resumes from the newest checkpoint at or below `max_step`, or
starts afresh when there is none.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from cocosnet.io import atomic_write_json
from cocosnet.train.checkpoint import checkpoint_step, list_checkpoints, newest_good
from cocosnet.train.inputs import code_differences, inputs_differences, inputs_key

SUPERSEDED = "superseded"
REASON = "reason.json"


def superseded_dir(ckpt_dir: Path) -> Path:
    """checkpoints/pretrain -> checkpoints/superseded/pretrain."""
    return ckpt_dir.parent / SUPERSEDED / ckpt_dir.name


def _move(paths: list[Path], dst: Path) -> None:
    """Move checkpoints into `dst`. Where `dst` has one of the same name already (the same step of the
    same inputs), the incoming one is kept too, as `<name>.duplicate-<n>`, which is never resumed."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target, n = dst / path.name, 0
        while target.exists():
            n += 1
            target = dst / f"{path.name}.duplicate-{n}"
        shutil.move(str(path), target)


def supersede(ckpt_dir: Path, saved: dict, reasons: list[str]) -> Path:
    """Move the checkpoints of `ckpt_dir` aside, under the key of the inputs they were trained from."""
    dest = superseded_dir(ckpt_dir) / inputs_key(saved)
    _move(list_checkpoints(ckpt_dir), dest)
    (ckpt_dir / REASON).unlink(missing_ok=True)
    atomic_write_json(dest / REASON, {"superseded_because": reasons, "inputs": saved})
    return dest


def _take_back(earlier: Path, ckpt_dir: Path, max_step: int) -> list[Path]:
    """Return to `ckpt_dir` the checkpoints of a superseded set of the current inputs that go further than
    its own newest, up to `max_step`; the folder goes once emptied. Returns those taken."""
    active = [checkpoint_step(p) for p in list_checkpoints(ckpt_dir)]
    newest = max(active, default=0)
    taken = [p for p in list_checkpoints(earlier) if newest < checkpoint_step(p) <= max_step]
    _move(taken, ckpt_dir)
    if not [p for p in earlier.iterdir() if p.name != REASON]:
        shutil.rmtree(earlier)
    return taken


def choose_resume(ckpt_dir: Path, inputs: dict, *, stage: str, max_step: int,
                  across_code_change: bool = False) -> dict | None:
    """The checkpoint state to resume for `inputs` and a run of `max_step` steps, or None to start
    afresh (see the module doc). With `across_code_change`, a checkpoint whose inputs differ only in the
    code's behaviour is resumed (the caller records it). Call on the main rank only; other ranks then
    load `list_checkpoints(ckpt_dir)[-1]`, which is the one returned."""
    ckpt_dir = Path(ckpt_dir)
    found = newest_good(ckpt_dir)
    if found is not None:
        path, state = found
        reasons = inputs_differences(state.get("inputs", {}), inputs)
        code = code_differences(state.get("inputs", {}), inputs)
        if reasons and across_code_change and not inputs_differences({**state.get("inputs", {}), "code":
                                                                      inputs.get("code")}, inputs):
            warnings.warn(f"{stage}: resuming {path} across a change of the training code ({', '.join(code[:6])}), "
                          "as asked", stacklevel=2)
            reasons = []
        if reasons:
            found = None
            dest = supersede(ckpt_dir, state.get("inputs", {}), reasons)
            warnings.warn(f"{stage}: {path} was trained from other inputs ({'; '.join(reasons[:6])}); its "
                          f"checkpoints were moved to {dest} and {stage} starts afresh", stacklevel=2)
    elif list(ckpt_dir.glob("ckpt-*.pt.corrupt")):
        warnings.warn(f"{stage}: no good checkpoint left in {ckpt_dir}; starting afresh", stacklevel=2)
    earlier = superseded_dir(ckpt_dir) / inputs_key(inputs)
    if earlier.is_dir() and _take_back(earlier, ckpt_dir, max_step):
        found = None
        warnings.warn(f"{stage}: resuming the checkpoints of these exact inputs from {earlier}", stacklevel=2)
    longer = [p for p in list_checkpoints(ckpt_dir) if checkpoint_step(p) > max_step]
    if longer:
        found = None
        _move(longer, earlier)
        atomic_write_json(earlier / REASON, {"superseded_because": [f"past the {max_step} steps asked for"],
                                             "inputs": inputs})
        kept = list_checkpoints(ckpt_dir)
        warnings.warn(f"{stage}: checkpoints past step {max_step} ({longer[0].name} .. {longer[-1].name}) moved to "
                      f"{earlier}; " + (f"resuming from {kept[-1].name}" if kept else "starting afresh"),
                      stacklevel=2)
    found = found or newest_good(ckpt_dir)
    return None if found is None else found[1]
