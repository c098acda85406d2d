"""CPU kernels for the PatchMatch search (kernels.cpp beside this file), built on first use.

`fused_scores`: the candidate scores. The `grid_sample` path samples each candidate's C features
into a (B, C, H, W, K) tensor, then multiplies and sums; the fused kernel reads each candidate's
4 bilinear corners from a channels-last key and reduces them at once, so nothing of that size is
built and backward keeps only its inputs. Results equal the `grid_sample` path to float rounding
(tests/test_kernels.py).

`select_top_k`: the de-duplicated top-k of the candidates, one small sort per pixel instead of
two sorts, a scatter and a top-k over the whole candidate tensor (equal up to the order of ties).

`search_step`: a whole search iteration per pixel (the neighbours' candidates, the rounded best,
the jittered best, their scores and the top-k), so none of the (B, H, W, N, 2) candidate tensors
the tensor version concatenates is built. The same candidates, scores and selection.

`weighted_samples`: a weighted sum of bilinear samples at each pixel's candidates (a level's warp, and
its best candidate's features for the GRU): the same values as `grid_sample`, nothing of size
(B, C, H, W, K) built. Its gradients recompute the `grid_sample` path in chunks of candidates
(`patchmatch._WeightedSample`).

`search_layout`: the features in the layout the kernels read (channels-last), made once per level
rather than copied by every score pass.

The kernels are compiled with the machine's C++ compiler through `torch.utils.cpp_extension` the
first time they are needed (about 30 s; `make` does it at install with `python -m
cocosnet.models.kernels`) and cached under ~/.cache/torch_extensions (or
$TORCH_EXTENSIONS_DIR), one build per checkout and source (`build_name`). Set
COCOSNET_CPU_KERNELS=0 to use the tensor versions in models/patchmatch.py; where the build fails, a
warning says why and the tensor versions are used.
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

import torch
from torch import Tensor

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


def scores_apply(query: Tensor, key: Tensor, coords: Tensor) -> bool:
    """Whether `fused_scores` handles these inputs (CPU; query and key both float32 or both float64)
    and is available."""
    on_cpu = all(t.device.type == "cpu" for t in (query, key, coords))
    return (on_cpu and query.dtype == key.dtype and query.dtype in (torch.float32, torch.float64)
            and coords.is_floating_point() and extension() is not None)


class _FusedScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
        ctx.save_for_backward(query, key, coords)
        return extension().scores_forward(query, key, coords)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        query, key, coords = ctx.saved_tensors
        grad_query, grad_key, grad_coords = extension().scores_backward(grad, query, key, coords)
        return grad_query, grad_key, grad_coords


def fused_scores(query: Tensor, key: Tensor, coords: Tensor) -> Tensor:
    """query (B, C, H, W), key (B, C, Hk, Wk), coords (B, H, W, K, 2) (x, y) in key pixels -> (B, H, W, K).

    The same as `(sample_at(key, coords) * query[..., None]).sum(1)`, without the sampled tensor.
    """
    return _FusedScores.apply(_channels_innermost(query), _channels_innermost(key), coords.to(query.dtype).contiguous())


def _channels_innermost(x: Tensor) -> Tensor:
    """(B, C, H, W) -> the contiguous (B, H, W, C) the kernels read; free after `search_layout`."""
    return x.permute(0, 2, 3, 1).contiguous()


def search_layout(x: Tensor) -> Tensor:
    """x (B, C, H, W) stored channels-last when the kernels will read it (a no-op elsewhere). A level
    calls this once for its query and key: each score pass would otherwise copy both (at 1024^2,
    2 x 200 MB per pass, about 11 passes per level). Differentiable, values unchanged."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and extension() is not None:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def select_applies(coords: Tensor, scores: Tensor) -> bool:
    """Whether `select_top_k` handles these (CPU, one float32/float64 dtype, no autograd) and is available."""
    return (coords.device.type == "cpu" and scores.device.type == "cpu" and coords.dtype == scores.dtype
            and coords.dtype in (torch.float32, torch.float64)
            and not (torch.is_grad_enabled() and (coords.requires_grad or scores.requires_grad))
            and extension() is not None)


def select_top_k(coords: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """coords (B, H, W, N, 2), scores (B, H, W, N) -> the best k with distinct half-pixel cells,
    best first: (B, H, W, k, 2), (B, H, W, k)."""
    return tuple(extension().select_top_k(coords, scores, k))


def search_applies(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor) -> bool:
    """Whether `search_step` handles these: where both `fused_scores` and `select_top_k` do, with the
    coords in the features' dtype."""
    return (scores_apply(query, key, coords) and select_applies(coords, scores) and coords.dtype == query.dtype)


def search_step(query: Tensor, key: Tensor, coords: Tensor, scores: Tensor, jitter: Tensor,
                m: int) -> tuple[Tensor, Tensor]:
    """patchmatch.search_step's iteration in one pass: query (B, C, H, W), key (B, C, Hk, Wk), coords
    (B, H, W, k, 2) best first with scores (B, H, W, k), jitter (B, H, W, R, 2) (the random samples'
    offsets from the best candidate), m neighbour candidates per side -> the new top-k coords, scores."""
    return tuple(extension().search_step(_channels_innermost(query), _channels_innermost(key), coords.contiguous(),
                                         scores.contiguous(), jitter.contiguous(), m))


def samples_apply(source: Tensor, coords: Tensor, weights: Tensor) -> bool:
    """Whether `weighted_samples` handles these: CPU, one float32/float64 dtype (its gradients are
    `patchmatch._WeightedSample`'s)."""
    tensors = (source, coords, weights)
    return (all(t.device.type == "cpu" and t.dtype == source.dtype for t in tensors)
            and source.dtype in (torch.float32, torch.float64) and extension() is not None)


def weighted_samples(source: Tensor, coords: Tensor, weights: Tensor) -> Tensor:
    """source (B, C, Hk, Wk), coords (B, H, W, K, 2) (x, y) in source pixels, weights (B, H, W, K) ->
    (B, C, H, W) channels-last: sum_k weights[..., k] * the bilinear sample at coords[..., k, :], as
    `(patchmatch.sample_at(source, coords) * weights[:, None]).sum(-1)` computes it, without the samples."""
    out = extension().weighted_samples(_channels_innermost(source), coords.contiguous(), weights.contiguous())
    return out.permute(0, 3, 1, 2)


def main() -> None:
    report_build(SOURCE, extension, "the tensor versions will be used")


if __name__ == "__main__":
    main()
