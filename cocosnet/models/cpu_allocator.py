"""A CPU allocator that keeps the pages of freed large tensors for reuse (cpu_allocator.cpp beside this file).

Why: glibc serves every block over its mmap threshold (at most 32 MB; a (1, 64, 1024, 1024) map is
256 MB) with fresh pages from the kernel and returns them on free, so each large tensor's pages are
faulted in and zeroed again. At 1024^2 inference that was a quarter of the CPU time
(docs/performance.md, item 21). Keeping the freed blocks instead (glibc with MALLOC_MMAP_MAX_=0)
was 20% faster but raised the peak by 2.5 GB, because the heap fragments.

Here, requests of 1 MiB or more get blocks of their own mapping. A request takes the smallest cached
block that is large enough (its tail stays cached), else grows the largest cached block in place of
new pages (mremap moves its pages), else maps fresh pages. Cached blocks are unmapped, smallest
first, whenever live + cached would exceed the largest amount ever live at once by more than SLACK
of it, so the process holds at most that much more than it needed without the cache (glibc's
fragmentation, which this avoids for large blocks, usually costs more). The values computed are the
same: only where tensors live changes.

`install()` is called by the stages, the `cocosnet` command and the benchmarks. Memory stays
mapped after a large step for the next one; `release_cached()` gives it back. COCOSNET_CPU_ALLOCATOR=0
leaves PyTorch's allocator in place; where the build fails, a warning says why and nothing changes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from cocosnet.models.kernels import build_extension, report_build

SOURCE = Path(__file__).with_suffix(".cpp")  # cocosnet.deps counts it as part of this module
ENV = "COCOSNET_CPU_ALLOCATOR"
MIN_BYTES = 1 << 20  # below this glibc's heap already reuses freed memory
SLACK = 0.125  # the pages held may exceed the most ever in use at once by this fraction of it


@lru_cache(maxsize=1)
def extension():
    """The compiled module, or None when disabled or when it cannot be built here."""
    return build_extension("cocosnet_cpu_allocator", SOURCE, ENV, what="the caching CPU allocator",
                           instead="keeping PyTorch's")


def install(device: str | torch.device = "cpu") -> bool:
    """Route CPU allocations of MIN_BYTES or more through the page cache, for the rest of the process,
    when `device` (where the run computes) is the CPU; on a GPU run it leaves everything as it is.

    Returns whether it is in place (False when disabled or not built). Calling it again changes nothing."""
    if torch.device(device).type != "cpu":
        return False
    ext = extension()
    if ext is None:
        return False
    ext.install(MIN_BYTES, SLACK)
    return True


def release_cached() -> None:
    """Unmap every cached block (the pages go back to the system); live tensors are untouched."""
    ext = extension()
    if ext is not None:
        ext.release_cached()


def stats() -> dict:
    """live_bytes, cached_bytes, peak_live_bytes, cached_blocks, and how many requests were `reused`
    (a cached block), `grown` (a cached block extended) or `fresh` (new pages), and blocks `unmapped`.
    Zeros until installed; empty where the allocator is disabled or not built."""
    ext = extension()
    return dict(ext.stats()) if ext is not None else {}


def main() -> None:
    report_build(SOURCE, extension, "PyTorch's allocator will be used")


if __name__ == "__main__":
    main()
