"""What a stage run needs from the library: its lock, and errors as one line."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cocosnet.errors import CocosnetError, StageLocked

LOCKS = Path(".locks")
# A DataLoader worker's exception comes back wrapped in the worker's traceback text.
_WRAPPED = re.compile(r"^[\w.]+(?:Error|Locked): (.*)$", re.MULTILINE)


def lock_name(stage: str, params: str | Path) -> str:
    """The lock of one stage of one pipeline: a params file other than ./params.yaml (the study's
    study/params.yaml) runs the same stage on other outputs, so it takes a lock of its own."""
    params = Path(params)
    if params.resolve() == Path("params.yaml").resolve():
        return stage
    tag = re.sub(r"[^\w-]+", "_", os.path.relpath(params.with_suffix(""))).strip("_")
    return f"{stage}@{tag}"


PARENT_HOLDS_LOCK_ENV = "COCOSNET_PARENT_HOLDS_LOCK"  # "1": set by a stage for the torchrun it starts


@contextmanager
def stage_lock(name: str, folder: Path = LOCKS) -> Iterator[None]:
    """Hold `<folder>/<name>.lock` for the run; a second run of the same stage is refused at once.

    Only rank 0 of a torchrun job takes it, and none of them when the stage started torchrun itself
    (its launching process holds the lock for them, PARENT_HOLDS_LOCK_ENV); the lock goes with the
    process, so a killed run leaves none behind."""
    if int(os.environ.get("RANK", "0")) != 0 or os.environ.get(PARENT_HOLDS_LOCK_ENV) == "1":
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    try:  # never through a planted link: truncating the lock would truncate its target
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StageLocked(f"{path}: is a symbolic link, not a lock file; remove it and rerun") from None
        raise
    with os.fdopen(fd, "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise StageLocked(f"{path}: stage {name!r} is already running ({holder}); wait for it to finish, "
                              "or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()


def one_line(exc: BaseException) -> str:
    """The user's message of `exc`, without the worker traceback a DataLoader wraps around it."""
    text = str(exc)
    if "Original Traceback" in text:
        found = _WRAPPED.findall(text)
        if found:
            return found[-1]
    if isinstance(exc, OSError) and not isinstance(exc, CocosnetError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return text
