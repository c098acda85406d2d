"""What every stage CLI shares: the --params and --debug flags, config loading, the stage lock, clean errors."""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cocosnet.config import Config, load_config
from cocosnet.errors import CocosnetError, StageLocked
from cocosnet.io import storage_error

DEBUG_ENV = "COCOSNET_DEBUG"
LOCKS = Path(".locks")
# A DataLoader worker's exception comes back wrapped in the worker's traceback text.
_WRAPPED = re.compile(r"^[\w.]+(?:Error|Locked): (.*)$", re.MULTILINE)


@contextmanager
def stage_lock(name: str, folder: Path = LOCKS) -> Iterator[None]:
    """Hold `<folder>/<name>.lock` for the run; a second run of the same stage is refused at once.

    Only rank 0 of a torchrun job takes it; the lock goes with the process, so a killed run leaves
    none behind."""
    if int(os.environ.get("RANK", "0")) != 0:
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


def run_stage(description: str, main: Callable[[Config, argparse.Namespace], None],
              add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse `--params` (and stage flags), load the config, take the stage's lock (named after the
    script: `python -m stages.evaluate` holds `.locks/evaluate.lock`), run `main`.

    Errors a user can act on (bad params or data, a corrupt file, a full disk, a held lock) end
    the process with one line naming the file or key and exit status 2; `--debug` or
    COCOSNET_DEBUG=1 keeps the traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        cfg = load_config(args.params)
        with stage_lock(Path(sys.argv[0]).stem):
            main(cfg, args)
    except (CocosnetError, OSError) as exc:
        if debug:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, CocosnetError):
            if exc.filename is None:
                raise
            exc = storage_error(Path(exc.filename), exc) if exc.errno == errno.ENOSPC else exc
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)

