"""The fused candidate-score kernel against the grid_sample path it replaces on the CPU."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from cocosnet.models import kernels, patchmatch
from cocosnet.models.patchmatch import patch_match, sample_at
from tests.helpers import coarse_init, planted


def slow_scores(query, key, coords):
    return (sample_at(key, coords) * query.unsqueeze(-1)).sum(1)


def inputs(dtype, seed=0, b=2, c=7, h=9, w=11, hk=6, wk=5, k=6):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(b, c, h, w, generator=g, dtype=dtype), dim=1)
    key = F.normalize(torch.randn(b, c, hk, wk, generator=g, dtype=dtype), dim=1)
    # Inside, outside, on the border and on integer positions: every case of the bilinear sampling.
    coords = torch.rand(b, h, w, k, 2, generator=g, dtype=dtype) * torch.tensor([wk + 2, hk + 2], dtype=dtype) - 1
    coords[0, 0, 0, :5] = torch.tensor([[0, 0], [wk - 1, hk - 1], [2, 3], [wk - 1, 1.5], [0.5, hk - 1]], dtype=dtype)
    coords[1, 2, 3, :2] = torch.tensor([[-3.0, 2.5], [wk + 4.0, hk + 0.25]], dtype=dtype)
    return query, key, coords


def test_the_kernel_builds_here():
    assert kernels.extension() is not None, "the C++ kernel must build where a compiler is installed"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_scores_and_all_gradients_equal_the_grid_sample_path(dtype, tol):
    query, key, coords = (t.requires_grad_() for t in inputs(dtype))
    fast, slow = kernels.fused_scores(query, key, coords), slow_scores(query, key, coords)
    torch.testing.assert_close(fast, slow, atol=tol, rtol=0)
    weights = torch.randn(fast.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for got, want, name in zip(torch.autograd.grad((fast * weights).sum(), (query, key, coords)),
                               torch.autograd.grad((slow * weights).sum(), (query, key, coords)),
                               ("query", "key", "coords")):
        torch.testing.assert_close(got, want, atol=tol, rtol=0, msg=lambda m: f"grad {name}: {m}")


def test_gradcheck_in_float64():
    query, key, _ = inputs(torch.float64, seed=3, b=2, c=3, h=3, w=4, hk=4, wk=5)
    query, key = query[:1], key[:1]
    g = torch.Generator().manual_seed(3)
    # Away from the kinks at integers and at the border: cell + a fraction in [0.1, 0.9].
    cells = torch.randint(0, 3, (1, 3, 4, 3, 2), generator=g).double()
    coords = cells + 0.1 + 0.8 * torch.rand(cells.shape, generator=g, dtype=torch.float64)
    args = tuple(t.detach().requires_grad_() for t in (query, key, coords))
    assert torch.autograd.gradcheck(kernels.fused_scores, args, eps=1e-6, atol=1e-7)


def test_candidate_scores_takes_the_kernel_on_cpu_and_its_own_path_without_it(monkeypatch):
    query, key, coords = inputs(torch.float32, seed=4)
    calls = []
    real = kernels.fused_scores
    monkeypatch.setattr(kernels, "fused_scores", lambda *a: calls.append(1) or real(*a))
    fast = patchmatch.candidate_scores(query, key, coords)
    assert calls == [1]
    monkeypatch.setattr(kernels, "extension", lambda: None)
    slow = patchmatch.candidate_scores(query, key, coords)
    assert calls == [1]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    kernels.extension.cache_clear()
    try:
        assert kernels.extension() is None
        assert not kernels.scores_apply(*inputs(torch.float32))
    finally:
        monkeypatch.delenv(kernels.ENV)
        kernels.extension.cache_clear()
    assert kernels.scores_apply(*inputs(torch.float32))


def test_other_dtypes_use_the_grid_sample_path():
    query, key, coords = inputs(torch.float32)
    assert not kernels.scores_apply(query.bfloat16(), key.bfloat16(), coords)
    assert not kernels.scores_apply(query, key.double(), coords)
    assert kernels.scores_apply(query, key, coords.double())  # coords are cast to the features' dtype


def test_bad_shapes_are_refused_with_a_message():
    query, key, coords = inputs(torch.float32)
    with pytest.raises(RuntimeError, match="coords must be"):
        kernels.fused_scores(query, key, coords[:, :4])
    with pytest.raises(RuntimeError, match="disagree on B or C"):
        kernels.fused_scores(query, key[:, :3], coords)


def test_patch_match_with_the_kernel_finds_what_the_grid_sample_path_finds(monkeypatch):
    query, key, truth = planted(48, 48, seed=11)
    fast = patch_match(query, key, init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(kernels, "extension", lambda: None)
    slow = patch_match(query, key, init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    # The search is discrete: float rounding may flip a rare near-tie, never the result at large.
    same = (fast[0][..., 0, :] == slow[0][..., 0, :]).all(-1).float().mean()
    assert same >= 0.99
    torch.testing.assert_close(fast[1][..., 0], slow[1][..., 0], atol=1e-3, rtol=0)


def tensor_select(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(kernels, "extension", lambda: None)
        return patchmatch.select_top_k(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_top_k_equals_the_tensor_version(monkeypatch, dtype):
    g = torch.Generator().manual_seed(5)
    # Quarter-pixel positions on a small map: many candidates share a half-pixel cell.
    coords = torch.randint(0, 24, (2, 5, 7, 30, 2), generator=g).to(dtype) / 4
    scores = torch.rand(2, 5, 7, 30, generator=g, dtype=dtype)  # distinct: no ties to order
    assert kernels.select_applies(coords, scores)
    fast = kernels.select_top_k(coords, scores, 8)
    slow = tensor_select(monkeypatch, coords, scores, 8, 6, 6)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    cells = torch.round(fast[0] * 2)
    assert ((cells.unsqueeze(3) == cells.unsqueeze(4)).all(-1).sum((-1, -2)) == 8).all()  # all distinct


def test_select_top_k_fills_with_the_best_duplicates_when_cells_run_out():
    coords = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 1.0], [0.2, 0.1], [3.1, 1.0]]).view(1, 1, 1, 5, 2)
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3]).view(1, 1, 1, 5)
    out_coords, out_scores = kernels.select_top_k(coords, scores, 4)
    assert out_scores.flatten().tolist() == pytest.approx([0.9, 0.3, 0.7, 0.5])
    assert out_coords[0, 0, 0, :2].flatten().tolist() == pytest.approx([0.1, 0.0, 3.1, 1.0])


def test_select_top_k_ranks_nan_last():
    coords = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]).view(1, 1, 1, 3, 2)
    scores = torch.tensor([float("nan"), 0.2, 0.4]).view(1, 1, 1, 3)
    assert kernels.select_top_k(coords, scores, 2)[1].flatten().tolist() == pytest.approx([0.4, 0.2])


def test_select_top_k_stays_with_the_tensor_version_under_autograd():
    coords = torch.rand(1, 2, 2, 5, 2, requires_grad=True)
    assert not kernels.select_applies(coords, torch.rand(1, 2, 2, 5))
    with torch.no_grad():
        assert kernels.select_applies(coords, torch.rand(1, 2, 2, 5))


def composed_search(monkeypatch, *args, **kwargs):
    """patchmatch.search_step as tensor ops around the score and select kernels (no search kernel)."""
    with monkeypatch.context() as m:
        m.setattr(kernels, "search_applies", lambda *a: False)
        return patchmatch.search_step(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,c,h,w,hk,wk,k,samples", [(2, 7, 9, 11, 6, 5, 16, 4), (1, 5, 4, 3, 7, 8, 32, 2),
                                                     (1, 3, 1, 1, 1, 1, 4, 3), (1, 4, 6, 2, 3, 9, 1, 0)])
def test_the_search_kernel_equals_the_tensor_iteration_exactly(monkeypatch, dtype, b, c, h, w, hk, wk, k, samples):
    g = torch.Generator().manual_seed(h * w + k)
    query = F.normalize(torch.randn(b, c, h, w, generator=g, dtype=dtype), dim=1)
    key = F.normalize(torch.randn(b, c, hk, wk, generator=g, dtype=dtype), dim=1)
    # Quarter-pixel positions, some outside the key: duplicates, borders and clamping all occur.
    coords = torch.round((torch.rand(b, h, w, k, 2, generator=g, dtype=dtype) * (wk + 2) - 1) * 4) / 4
    scores = kernels.fused_scores(query, key, coords).sort(dim=-1, descending=True).values
    args = dict(radius=3.0, num_random=samples)
    assert kernels.search_applies(query, key, coords, scores)
    fast = patchmatch.search_step(query, key, coords, scores, generator=torch.Generator().manual_seed(1), **args)
    slow = composed_search(monkeypatch, query, key, coords, scores, generator=torch.Generator().manual_seed(1), **args)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    cl = patchmatch.search_step(kernels.search_layout(query), kernels.search_layout(key), coords, scores,
                                generator=torch.Generator().manual_seed(1), **args)
    assert torch.equal(cl[0], fast[0]) and torch.equal(cl[1], fast[1])


def test_the_search_kernel_is_used_only_where_it_applies(monkeypatch):
    query, key, coords = inputs(torch.float32)
    scores = torch.rand(coords.shape[:4])
    assert kernels.search_applies(query, key, coords, scores)
    assert not kernels.search_applies(query, key, coords.double(), scores.double())
    assert not kernels.search_applies(query.bfloat16(), key.bfloat16(), coords, scores)
    monkeypatch.setattr(kernels, "extension", lambda: None)
    assert not kernels.search_applies(query, key, coords, scores)
    assert patchmatch.search_step(query, key, coords, scores, radius=2.0)[0].shape == coords.shape


def test_the_search_kernel_refuses_bad_shapes_with_a_message():
    query, key, coords = inputs(torch.float32)
    scores, jitter = torch.rand(coords.shape[:4]), torch.zeros(*coords.shape[:3], 4, 2)
    with pytest.raises(RuntimeError, match="scores must be"):
        kernels.search_step(query, key, coords, scores[..., :3], jitter, 1)
    with pytest.raises(RuntimeError, match="jitter must be"):
        kernels.search_step(query, key, coords, scores, jitter[:, :2], 1)
    with pytest.raises(RuntimeError, match="m must be"):
        kernels.search_step(query, key, coords, scores, jitter, coords.shape[3] + 1)


def test_a_level_lays_out_its_features_for_the_kernels_once(monkeypatch):
    """Every kernel call of a level reads the same channels-last copy of the query and of the key
    (before, each score pass copied both), and the level's results are bit-identical either way."""
    query, key, truth = planted(24, 24, seed=2)
    level = patchmatch.PatchMatchGRU(query.shape[1], num_candidates=4, iters=3).eval()
    real, seen = kernels.extension(), []

    class Spy:  # the compiled module, recording the (B, H, W, C) query and key each kernel reads
        def __getattr__(self, name):
            if name not in ("scores_forward", "search_step"):
                return getattr(real, name)
            return lambda q, k, *a: seen.append((q, k)) or getattr(real, name)(q, k, *a)

    monkeypatch.setattr(kernels, "extension", lambda: Spy())

    def run():
        seen.clear()
        with torch.no_grad():
            return level(query, key, key[:, :3], init=coarse_init(truth), generator=torch.Generator().manual_seed(0))

    once = run()
    assert len(seen) >= 6
    # The tensors stay alive in `seen`, so equal pointers mean one shared copy.
    assert len({q.data_ptr() for q, _ in seen}) == 1 and len({k.data_ptr() for _, k in seen}) == 1
    monkeypatch.setattr(kernels, "search_layout", lambda x: x)
    per_pass = run()
    assert len({q.data_ptr() for q, _ in seen}) == len(seen)  # the old way: a new copy every pass
    assert all(torch.equal(a, b) for a, b in zip(once, per_pass))


def test_the_build_finds_the_interpreters_ninja_first_and_leaves_path_alone(monkeypatch):
    import os
    import sys
    from pathlib import Path

    import torch.utils.cpp_extension

    seen = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **_: seen.append(os.environ["PATH"]) or "built")
    monkeypatch.setenv("PATH", "/somewhere/else")
    kernels.extension.cache_clear()
    try:
        assert kernels.extension() == "built"
    finally:
        kernels.extension.cache_clear()
    assert seen == [os.pathsep.join([str(Path(sys.executable).parent), "/somewhere/else"])]
    assert os.environ["PATH"] == "/somewhere/else"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_weighted_samples_equal_the_grid_sample_warp(dtype, tol):
    """A level's warp (softmax-weighted colours at the candidates) and the GRU's first input (one
    candidate, weight 1): positions inside, outside, on the border and on integers; a batch of 2."""
    _, key, coords = inputs(dtype, seed=5)
    weights = torch.softmax(torch.randn(coords.shape[:4], dtype=dtype), dim=-1)
    for source in (key, key[:, :3] * 4):
        fast = kernels.weighted_samples(source, coords, weights)
        assert fast.shape == (2, source.shape[1], 9, 11) and fast.stride(1) == 1
        torch.testing.assert_close(fast, (sample_at(source, coords) * weights[:, None]).sum(-1), atol=tol, rtol=0)
    one = coords[..., 2:3, :]
    torch.testing.assert_close(kernels.weighted_samples(key, one, torch.ones(one.shape[:4], dtype=dtype)),
                               sample_at(key, one)[..., 0], atol=tol, rtol=0)


def test_weighted_sample_takes_the_kernel_with_and_without_autograd(monkeypatch):
    _, key, coords = inputs(torch.float32, seed=6)
    weights = torch.rand(coords.shape[:4])
    calls = []
    real = kernels.weighted_samples
    monkeypatch.setattr(kernels, "weighted_samples", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = patchmatch.weighted_sample(key, coords, weights)
    assert calls == [1]
    warp = patchmatch.weighted_sample(key.requires_grad_(), coords, weights)  # the warp loss needs this gradient
    assert calls == [1, 1] and warp.requires_grad
    torch.testing.assert_close(fast, warp.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("chunk_elements", [1, 10**9])  # one candidate per backward chunk, or all at once
def test_weighted_sample_gradients_equal_the_grid_sample_path(monkeypatch, chunk_elements):
    """Gradients of the warp for source, positions and weights, in float64, including positions outside
    the source and on its border (where grid_sample's clamping zeroes a position's gradient)."""
    monkeypatch.setattr(patchmatch, "WARP_CHUNK_ELEMENTS", chunk_elements)
    _, key, coords = inputs(torch.float64, seed=7)
    weights = torch.softmax(torch.randn(coords.shape[:4], dtype=torch.float64), dim=-1)
    upstream = torch.randn(2, key.shape[1], 9, 11, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_() for t in (key, coords, weights)]
        if fused:
            out = patchmatch.weighted_sample(*leaves)
            assert out.grad_fn.name().startswith("_WeightedSample")
        else:
            out = patchmatch._sampled_sum(*leaves)
        out.backward(upstream)
        grads.append([t.grad for t in leaves])
    for name, fast, slow in zip(("source", "coords", "weights"), *grads):
        torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0, msg=name)
    only_coords = [coords.clone().requires_grad_() for _ in range(2)]  # the other inputs want no gradient
    patchmatch.weighted_sample(key, only_coords[0], weights).sum().backward()
    patchmatch._sampled_sum(key, only_coords[1], weights).sum().backward()
    torch.testing.assert_close(only_coords[0].grad, only_coords[1].grad, atol=1e-12, rtol=0)


def test_weighted_samples_reject_mismatched_shapes():
    _, key, coords = inputs(torch.float32)
    with pytest.raises(RuntimeError, match="weights"):
        kernels.weighted_samples(key, coords, torch.rand(2, 9, 11, 5))


@pytest.mark.parametrize("b", [1, 2])
def test_a_level_without_autograd_equals_its_tensor_sampling(monkeypatch, b):
    """The warp and the GRU's first input from `weighted_samples`, the offsets pooled from their
    channels-last view: the level's coords, scores and warp equal the `grid_sample` path's (float64, so
    rounding cannot flip a near-tie in the search), for one image and for a batch."""
    from cocosnet.models.patchmatch import PatchMatchGRU

    torch.manual_seed(0)
    level = PatchMatchGRU(6, num_candidates=4, iters=2, hidden_dim=8).eval().double()
    query, key = (F.normalize(torch.randn(b, 6, 10, 12, dtype=torch.float64), dim=1) for _ in range(2))
    colors = torch.rand(b, 3, 10, 12, dtype=torch.float64)

    def run():
        with torch.no_grad():
            return level(query, key, colors, generator=torch.Generator().manual_seed(1))

    calls = []
    real = kernels.weighted_samples
    monkeypatch.setattr(kernels, "weighted_samples", lambda *a: calls.append(1) or real(*a))
    fast = run()
    assert len(calls) == 2  # the GRU's first input and the warp
    monkeypatch.setattr(kernels, "samples_apply", lambda *a: False)
    slow = run()
    for got, want in zip(fast, slow):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    from cocosnet.models.kernels import build_extension

    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("COCOSNET_TEST_SWITCH", "1")
    with pytest.warns(RuntimeWarning, match=r"(?s)broken\.cpp: the test part could not be built .*; the fallback\. "
                                            r"Set COCOSNET_TEST_SWITCH=0"):
        assert build_extension("cocosnet_broken", broken, "COCOSNET_TEST_SWITCH", what="the test part",
                               instead="the fallback") is None
    monkeypatch.setenv("COCOSNET_TEST_SWITCH", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off: no build attempted, so no warning
        assert build_extension("cocosnet_broken", broken, "COCOSNET_TEST_SWITCH", what="x", instead="y") is None
