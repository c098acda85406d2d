"""Atomic file writes and resumable staging directories.

A stage writes into `<out>.partial/`, one file at a time, each by a rename.
If it is killed, the next run with the same spec keeps the finished files.
When all work is done the staging directory replaces `<out>` in one rename,
so DVC never sees a half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class Staging:
    """`<out>.partial/`, kept across interrupted runs that share the same spec."""

    def __init__(self, out: Path, spec: dict):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".partial")
        self._stamp = self.path / "_spec.json"
        text = json.dumps(spec, sort_keys=True, default=str)
        if self.path.exists() and (not self._stamp.exists() or self._stamp.read_text() != text):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._stamp.write_text(text)

    def commit(self) -> Path:
        """Replace `out` with the finished staging directory."""
        self._stamp.unlink(missing_ok=True)
        if self.out.exists():
            shutil.rmtree(self.out)
        self.path.rename(self.out)
        return self.out
