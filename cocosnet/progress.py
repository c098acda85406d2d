"""Progress bars with ETA for long loops; quiet when the CI variable is set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             enabled: bool = True) -> Iterator[T]:
    """Wrap an iterable in a tqdm bar, unless disabled or running under CI."""
    quiet = not enabled or bool(os.environ.get("CI"))
    return iter(tqdm(items, total=total, desc=desc, disable=quiet, dynamic_ncols=True))
