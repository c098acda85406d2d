"""The one atomic writer, resumable staging directories, and file hashes.

Every file the project writes goes through `atomic_write`: a temporary file in
the same folder, flushed and fsync'ed, renamed over the target, then the folder
fsync'ed, so a crash or a full disk leaves either the old file or the new one,
never a torn one. A stage writes into a staging folder, one file at a time;
if it is killed, the next run with the same spec keeps the finished files, and
when all work is done the staging folder replaces the output in one rename.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cocosnet.errors import StorageError


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """An OSError while writing `path`, as one line that names the file and what to do."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{path}: no space left on the device while writing it; free some space and rerun "
                            "(finished work is kept)")
    return StorageError(f"{path}: could not be written ({exc.strerror or exc})")


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc), else by the set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    """`.<name>.<host>-<pid>.`: whose temporary file it is, so a later writer can clear a dead one's."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


_CLEARED: set[Path] = set()  # folders this process has cleared: a folder is listed once, not per write


def clear_orphans(path: Path) -> list[Path]:
    """Remove the temporary files that writers in `path`'s folder on this host left when killed (their
    process is gone), the first time this process writes there; a live writer's file is left alone.
    Returns those removed."""
    path = Path(path)
    if path.parent in _CLEARED:
        return []
    _CLEARED.add(path.parent)
    pattern = re.compile(rf"^\..+\.{_HOST}-(\d+)\.[^/]*\.tmp$")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        m = pattern.match(sibling.name)
        if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
            sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` (str is UTF-8) to `path` atomically and durably, with the mode a plain `open` would
    give (0666 less the umask; a temporary file's 0600 must not survive the rename). Temporary files
    that killed writers left in the folder are cleared at this process's first write there."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_orphans(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)


def atomic_save(path: Path, save: Callable[[BinaryIO], object]) -> None:
    """`save(file)` into memory, then `atomic_write` (for PIL's and matplotlib's savers)."""
    buf = io.BytesIO()
    save(buf)
    atomic_write(path, buf.getvalue())


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One digest over the names and contents of `paths` (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode("utf-8") + b"\0" + bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


class Staging:
    """A staging folder for `out`, kept across interrupted runs that share the same spec.

    By default it is `<out>.partial/` beside `out`; pass `path` to keep it out of a
    folder that DVC tracks (a `.partial` inside a tracked output would make
    `dvc status` report the output as modified)."""

    def __init__(self, out: Path, spec: dict, *, path: Path | None = None):
        self.out = Path(out)
        self.path = Path(path) if path is not None else self.out.with_name(self.out.name + ".partial")
        self._stamp = self.path / "_spec.json"
        text = json.dumps(spec, sort_keys=True, default=str)
        if self.path.exists() and (not self._stamp.exists() or self._stamp.read_text() != text):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self._stamp, text)

    def commit(self) -> Path:
        """Replace `out` with the finished staging folder."""
        self._stamp.unlink(missing_ok=True)
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(self.out)
        if not any(self.path.parent.iterdir()) and self.path.parent != self.out.parent:
            self.path.parent.rmdir()
        return self.out
