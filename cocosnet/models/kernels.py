"""Builds the PatchMatch CPU kernels (kernels.cpp beside this file): the CPU implementation of the
custom ops in models/ops.py, which says what each computes.

`scores_forward` / `scores_backward`: the candidate scores and their gradients. Each candidate's 4
bilinear corners are read from a channels-last key and reduced at once, so the (B, C, H, W, K) samples
the tensor version builds never exist and backward keeps only its inputs.
`select_top_k`: the de-duplicated top-k, one small sort per pixel instead of two sorts, a scatter and a
top-k over the whole candidate tensor (equal up to the order of ties).
`search_step`: a whole search iteration per pixel, so none of the (B, H, W, N, 2) candidate tensors is built.
`weighted_samples`: a weighted sum of bilinear samples at each pixel's candidates, forward only (the
ops' backward recomputes the tensor version in chunks).

The kernels are compiled with the machine's C++ compiler through `torch.utils.cpp_extension` the
first time they are needed (about 30 s; `make` does it at install with `python -m
cocosnet.models.kernels`) and cached under ~/.cache/torch_extensions (or
$TORCH_EXTENSIONS_DIR), one build per checkout and source (`build_name`). Set
COCOSNET_CPU_KERNELS=0 to run the tensor versions; where the build fails (no compiler), a warning says
why and the tensor versions run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

SOURCE = Path(__file__).with_suffix(".cpp")  # cocosnet.deps counts it as part of this module
ENV = "COCOSNET_CPU_KERNELS"


@lru_cache(maxsize=1)
def extension():
    """The compiled module, or None when disabled or when it cannot be built here."""
    return build_extension("cocosnet_patchmatch_kernels", SOURCE, ENV, openmp=True,
                           what="the PatchMatch CPU kernels", instead="using the slower tensor versions")


def build_extension(name: str, source: Path, env: str, *, what: str, instead: str, openmp: bool = False):
    """Compile (or load from the cache) one C++ source as a Python module, with -O3; None when `env` is 0,
    or, with a warning naming `what` and `instead`, when it cannot be built here (no compiler, no headers)."""
    if os.environ.get(env, "1") == "0":
        return None
    from torch.utils.cpp_extension import load

    flags = ["-fopenmp"] if openmp else []
    try:
        with _pinned_ninja_first():
            return load(name=build_name(name, source), sources=[str(source)], verbose=False,
                        extra_cflags=["-O3", *flags], extra_ldflags=flags)
    except Exception as error:  # a failed build: the fallback still works
        warnings.warn(f"{source.name}: {what} could not be built ({error}); {instead}. Set {env}=0 to skip the "
                      "attempt.", RuntimeWarning, stacklevel=3)
        return None


def build_name(name: str, source: Path) -> str:
    """`name` keyed by the source's path and content: the build cache is shared by every checkout, and one
    build folder per name would make two checkouts (whose build files name different paths) rebuild
    each other's build on every call."""
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode("utf-8") + b"\0" + source.read_bytes()).hexdigest()[:12]
    return f"{name}_{key}"


def report_build(source: Path, extension, fallback: str) -> None:
    """Build (or load) a compiled part now rather than in the first stage that needs it, and say so."""
    start = time.perf_counter()
    state = "ready" if extension() is not None else f"not available; {fallback}"
    print(f"{source.name}: {state} ({time.perf_counter() - start:.0f} s)")


@contextmanager
def _pinned_ninja_first():
    """PATH with this interpreter's bin folder (the venv's pinned ninja) first, for the build only.

    Two ninja versions read each other's build log as stale, so a process started by `make` (venv
    ninja) and one started directly (say /usr/bin/ninja) would each rebuild the kernels (30 s)."""
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def main() -> None:
    report_build(SOURCE, extension, "the tensor versions will be used")


if __name__ == "__main__":
    main()
