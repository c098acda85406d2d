"""The PatchMatch custom ops (models/ops.py): the C++ CPU implementation against the tensor code it
replaces, the registration, and the build. Tests that need the compiled kernels skip, with the reason,
where they are switched off (COCOSNET_CPU_KERNELS=0) or cannot be built."""

import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from cocosnet.models import kernels, memory, ops, patchmatch
from cocosnet.models.ops import sample_at
from cocosnet.models.patchmatch import patch_match
from tests.helpers import coarse_init, planted


def _why_no_kernels() -> str | None:
    if os.environ.get(kernels.ENV, "1") == "0":
        return f"{kernels.ENV}=0: the tensor versions run"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler here: the tensor versions run"
    return None


needs_kernels = pytest.mark.skipif(_why_no_kernels() is not None, reason=_why_no_kernels() or "")


@pytest.fixture
def tensor_code(monkeypatch):
    """Run the ops' tensor code on the CPU too (what a GPU, or a machine without a compiler, runs)."""
    def use():
        monkeypatch.setattr(kernels, "extension", lambda: None)
    return use


class Spy:
    """The compiled module, recording the calls of `names` (with their first two arguments)."""

    def __init__(self, names):
        self.real, self.names, self.calls = kernels.extension(), names, []

    def __getattr__(self, name):
        if name not in self.names:
            return getattr(self.real, name)
        return lambda *a: self.calls.append((name, *a[:2])) or getattr(self.real, name)(*a)


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


@needs_kernels
def test_the_kernel_builds_here():
    assert kernels.extension() is not None, "the C++ kernels must build where a compiler is installed"


def test_the_ops_are_registered_with_torch_library():
    for name in ("candidate_scores", "candidate_scores_backward", "select_top_k", "search_step", "weighted_sample"):
        assert hasattr(torch.ops.cocosnet, name), name
    query, key, coords = inputs(torch.float32)
    torch.testing.assert_close(torch.ops.cocosnet.candidate_scores(query, key, coords),
                               ops.candidate_scores(query, key, coords), atol=0, rtol=0)


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
def test_opcheck_passes_for_every_op(tensor_code, implementation):
    """torch.library.opcheck: schema, fake (meta) shapes for torch.compile, and the autograd registration."""
    if implementation == "tensor":
        tensor_code()
    query, key, coords = inputs(torch.float64, seed=8, b=2, c=3, h=3, w=4, hk=4, wk=5, k=5)
    scores = torch.rand(coords.shape[:4], dtype=torch.float64)
    jitter = torch.rand(*coords.shape[:3], 2, 2, dtype=torch.float64)
    weights = torch.rand(coords.shape[:4], dtype=torch.float64)
    cases = [(ops.candidate_scores, (query, key, coords)),
             (ops.select_top_k, (coords, scores, 2, 4, 5)),
             (ops.search_step, (query, key, coords, scores, jitter, 1)),
             (ops.weighted_sample, (key, coords, weights))]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_scores_and_all_gradients_equal_the_grid_sample_path(dtype, tol):
    query, key, coords = (t.requires_grad_() for t in inputs(dtype))
    fast, slow = ops.candidate_scores(query, key, coords), slow_scores(query, key, coords)
    torch.testing.assert_close(fast, slow, atol=tol, rtol=0)
    weights = torch.randn(fast.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for got, want, name in zip(torch.autograd.grad((fast * weights).sum(), (query, key, coords)),
                               torch.autograd.grad((slow * weights).sum(), (query, key, coords)),
                               ("query", "key", "coords")):
        torch.testing.assert_close(got, want, atol=tol, rtol=0, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
def test_gradcheck_in_float64(tensor_code, implementation):
    if implementation == "tensor":
        tensor_code()
    query, key, _ = inputs(torch.float64, seed=3, b=2, c=3, h=3, w=4, hk=4, wk=5)
    query, key = query[:1], key[:1]
    g = torch.Generator().manual_seed(3)
    # Away from the kinks at integers and at the border: cell + a fraction in [0.1, 0.9].
    cells = torch.randint(0, 3, (1, 3, 4, 3, 2), generator=g).double()
    coords = cells + 0.1 + 0.8 * torch.rand(cells.shape, generator=g, dtype=torch.float64)
    args = tuple(t.detach().requires_grad_() for t in (query, key, coords))
    assert torch.autograd.gradcheck(ops.candidate_scores, args, eps=1e-6, atol=1e-7)


@needs_kernels
def test_candidate_scores_takes_the_kernel_on_cpu_and_the_tensor_code_without_it(monkeypatch, tensor_code):
    query, key, coords = inputs(torch.float32, seed=4)
    spy = Spy({"scores_forward"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)
    fast = ops.candidate_scores(query, key, coords)
    assert [name for name, *_ in spy.calls] == ["scores_forward"]
    tensor_code()
    slow = ops.candidate_scores(query, key, coords)
    assert len(spy.calls) == 1
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_switched_off_by_the_environment_the_ops_still_work(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "0")
    kernels.extension.cache_clear()
    try:
        assert kernels.extension() is None
        query, key, coords = inputs(torch.float32)
        torch.testing.assert_close(ops.candidate_scores(query, key, coords), slow_scores(query, key, coords),
                                   atol=1e-6, rtol=0)
    finally:
        monkeypatch.delenv(kernels.ENV)
        kernels.extension.cache_clear()


@needs_kernels
def test_other_dtypes_run_the_tensor_code(monkeypatch):
    query, key, coords = inputs(torch.float32)
    spy = Spy({"scores_forward"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)
    low = ops.candidate_scores(query.bfloat16(), key.bfloat16(), coords)
    mixed = ops.candidate_scores(query, key.double(), coords)
    assert spy.calls == [] and low.dtype == torch.bfloat16 and mixed.dtype == torch.float64
    torch.testing.assert_close(low.float(), slow_scores(query, key, coords), atol=0.05, rtol=0)
    ops.candidate_scores(query, key, coords.double())  # coords are cast to the features' dtype
    assert len(spy.calls) == 1


@needs_kernels
def test_bad_shapes_are_refused_with_a_message():
    query, key, coords = (t.permute(0, 2, 3, 1).contiguous() if t.dim() == 4 else t for t in inputs(torch.float32))
    with pytest.raises(RuntimeError, match="coords must be"):
        kernels.extension().scores_forward(query, key, coords[:, :4].contiguous())
    with pytest.raises(RuntimeError, match="disagree on B or C"):
        kernels.extension().scores_forward(query, key[..., :3].contiguous(), coords)


@needs_kernels
def test_patch_match_with_the_kernel_finds_what_the_tensor_code_finds(tensor_code):
    query, key, truth = planted(48, 48, seed=11)
    fast = patch_match(query, key, init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    tensor_code()
    slow = patch_match(query, key, init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    # The search is discrete: float rounding may flip a rare near-tie, never the result at large.
    same = (fast[0][..., 0, :] == slow[0][..., 0, :]).all(-1).float().mean()
    assert same >= 0.99
    torch.testing.assert_close(fast[1][..., 0], slow[1][..., 0], atol=1e-3, rtol=0)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_top_k_equals_the_tensor_version(dtype):
    g = torch.Generator().manual_seed(5)
    # Quarter-pixel positions on a small map: many candidates share a half-pixel cell.
    coords = torch.randint(0, 24, (2, 5, 7, 30, 2), generator=g).to(dtype) / 4
    scores = torch.rand(2, 5, 7, 30, generator=g, dtype=dtype)  # distinct: no ties to order
    fast = tuple(kernels.extension().select_top_k(coords, scores, 8))
    slow = ops._select_top_k(coords, scores, 8, 6, 6)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    assert all(torch.equal(a, b) for a, b in zip(ops.select_top_k(coords, scores, 8, 6, 6), fast))
    cells = torch.round(fast[0] * 2)
    assert ((cells.unsqueeze(3) == cells.unsqueeze(4)).all(-1).sum((-1, -2)) == 8).all()  # all distinct


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
def test_select_top_k_fills_with_the_best_duplicates_when_cells_run_out(tensor_code, implementation):
    if implementation == "tensor":
        tensor_code()
    coords = torch.tensor([[0.0, 0.0], [0.1, 0.0], [3.0, 1.0], [0.2, 0.1], [3.1, 1.0]]).view(1, 1, 1, 5, 2)
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3]).view(1, 1, 1, 5)
    out_coords, out_scores = ops.select_top_k(coords, scores, 4, 4, 4)
    assert out_scores.flatten().tolist() == pytest.approx([0.9, 0.3, 0.7, 0.5])
    assert out_coords[0, 0, 0, :2].flatten().tolist() == pytest.approx([0.1, 0.0, 3.1, 1.0])


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
def test_select_top_k_ranks_nan_last(tensor_code, implementation):
    if implementation == "tensor":
        tensor_code()
    coords = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]).view(1, 1, 1, 3, 2)
    scores = torch.tensor([float("nan"), 0.2, 0.4]).view(1, 1, 1, 3)
    assert ops.select_top_k(coords, scores, 2, 1, 5)[1].flatten().tolist() == pytest.approx([0.4, 0.2])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,c,h,w,hk,wk,k,samples", [(2, 7, 9, 11, 6, 5, 16, 4), (1, 5, 4, 3, 7, 8, 32, 2),
                                                     (1, 3, 1, 1, 1, 1, 4, 3), (1, 4, 6, 2, 3, 9, 1, 0)])
def test_the_search_kernel_equals_the_tensor_iteration_exactly(dtype, b, c, h, w, hk, wk, k, samples):
    g = torch.Generator().manual_seed(h * w + k)
    query = F.normalize(torch.randn(b, c, h, w, generator=g, dtype=dtype), dim=1)
    key = F.normalize(torch.randn(b, c, hk, wk, generator=g, dtype=dtype), dim=1)
    # Quarter-pixel positions, some outside the key: duplicates, borders and clamping all occur.
    coords = torch.round((torch.rand(b, h, w, k, 2, generator=g, dtype=dtype) * (wk + 2) - 1) * 4) / 4
    scores = ops.candidate_scores(query, key, coords).sort(dim=-1, descending=True).values
    jitter = (torch.rand(b, h, w, samples, 2, generator=g, dtype=dtype) * 2 - 1) * 3
    m = max(1, k // 16)
    fast = ops.search_step(query, key, coords, scores, jitter, m)
    slow = ops._search_step(query, key, coords, scores, jitter, m)  # tensor ops around the score and select kernels
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    cl = ops.search_step(ops.search_layout(query), ops.search_layout(key), coords, scores, jitter, m)
    assert torch.equal(cl[0], fast[0]) and torch.equal(cl[1], fast[1])


@needs_kernels
def test_the_search_step_takes_the_kernel_only_for_one_float_dtype(monkeypatch):
    query, key, coords = inputs(torch.float32)
    scores = torch.rand(coords.shape[:4])
    jitter = torch.zeros(*coords.shape[:3], 2, 2)
    spy = Spy({"search_step"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)
    ops.search_step(query, key, coords, scores, jitter, 1)
    assert len(spy.calls) == 1
    ops.search_step(query, key, coords.double(), scores.double(), jitter.double(), 1)
    out = ops.search_step(query.bfloat16(), key.bfloat16(), coords, scores, jitter, 1)
    assert len(spy.calls) == 1 and out[0].shape == coords.shape


@needs_kernels
def test_the_search_kernel_refuses_bad_shapes_with_a_message():
    query, key, coords = (t.permute(0, 2, 3, 1).contiguous() if t.dim() == 4 else t for t in inputs(torch.float32))
    scores, jitter = torch.rand(coords.shape[:4]), torch.zeros(*coords.shape[:3], 4, 2)
    ext = kernels.extension()
    with pytest.raises(RuntimeError, match="scores must be"):
        ext.search_step(query, key, coords, scores[..., :3].contiguous(), jitter, 1)
    with pytest.raises(RuntimeError, match="jitter must be"):
        ext.search_step(query, key, coords, scores, jitter[:, :2].contiguous(), 1)
    with pytest.raises(RuntimeError, match="m must be"):
        ext.search_step(query, key, coords, scores, jitter, coords.shape[3] + 1)


@needs_kernels
def test_a_level_lays_out_its_features_for_the_kernels_once(monkeypatch):
    """Every kernel call of a level reads the same channels-last copy of the query and of the key
    (before, each score pass copied both), and the level's results are bit-identical either way."""
    query, key, truth = planted(24, 24, seed=2)
    level = patchmatch.PatchMatchGRU(query.shape[1], num_candidates=4, iters=3).eval()
    spy = Spy({"scores_forward", "search_step"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)

    def run():
        spy.calls.clear()
        with torch.no_grad():
            return level(query, key, key[:, :3], init=coarse_init(truth), generator=torch.Generator().manual_seed(0))

    once = run()
    assert len(spy.calls) >= 6
    # The tensors stay alive in `calls`, so equal pointers mean one shared copy.
    assert len({q.data_ptr() for _, q, _ in spy.calls}) == 1 and len({k.data_ptr() for *_, k in spy.calls}) == 1
    monkeypatch.setattr(ops, "search_layout", lambda x: x)
    per_pass = run()
    assert len({q.data_ptr() for _, q, _ in spy.calls}) == len(spy.calls)  # the old way: a new copy every pass
    assert all(torch.equal(a, b) for a, b in zip(once, per_pass))


def test_the_build_finds_the_interpreters_ninja_first_and_leaves_path_alone(monkeypatch):
    import sys
    from pathlib import Path

    import torch.utils.cpp_extension

    seen = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **_: seen.append(os.environ["PATH"]) or "built")
    monkeypatch.setenv("PATH", "/somewhere/else")
    monkeypatch.setenv(kernels.ENV, "1")
    kernels.extension.cache_clear()
    try:
        assert kernels.extension() == "built"
    finally:
        kernels.extension.cache_clear()
    assert seen == [os.pathsep.join([str(Path(sys.executable).parent), "/somewhere/else"])]
    assert os.environ["PATH"] == "/somewhere/else"


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_weighted_samples_equal_the_grid_sample_warp(tensor_code, implementation, dtype, tol):
    """A level's warp (softmax-weighted colours at the candidates) and the GRU's first input (one
    candidate, weight 1): positions inside, outside, on the border and on integers; a batch of 2."""
    if implementation == "tensor":
        tensor_code()
    _, key, coords = inputs(dtype, seed=5)
    weights = torch.softmax(torch.randn(coords.shape[:4], dtype=dtype), dim=-1)
    for source in (key, key[:, :3] * 4):
        fast = ops.weighted_sample(source, coords, weights)
        assert fast.shape == (2, source.shape[1], 9, 11)
        torch.testing.assert_close(fast, (sample_at(source, coords) * weights[:, None]).sum(-1), atol=tol, rtol=0)
    one = coords[..., 2:3, :]
    torch.testing.assert_close(ops.weighted_sample(key, one, torch.ones(one.shape[:4], dtype=dtype)),
                               sample_at(key, one)[..., 0], atol=tol, rtol=0)


@needs_kernels
def test_weighted_sample_takes_the_kernel_with_and_without_autograd(monkeypatch):
    _, key, coords = inputs(torch.float32, seed=6)
    weights = torch.rand(coords.shape[:4])
    spy = Spy({"weighted_samples"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)
    with torch.no_grad():
        fast = ops.weighted_sample(key, coords, weights)
    assert len(spy.calls) == 1 and fast.stride(1) == 1  # channels-last, as the kernel writes it
    warp = ops.weighted_sample(key.requires_grad_(), coords, weights)  # the warp loss needs this gradient
    assert len(spy.calls) == 2 and warp.requires_grad
    torch.testing.assert_close(fast, warp.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("implementation", ["cpu", "tensor"])
@pytest.mark.parametrize("chunk_elements", [1, 10**9])  # one candidate per backward chunk, or all at once
def test_weighted_sample_gradients_equal_the_grid_sample_path(monkeypatch, tensor_code, implementation,
                                                              chunk_elements):
    """Gradients of the warp for source, positions and weights, in float64, including positions outside
    the source and on its border (where grid_sample's clamping zeroes a position's gradient)."""
    if implementation == "tensor":
        tensor_code()
    monkeypatch.setattr(memory, "WARP_CHUNK_ELEMENTS", chunk_elements)
    _, key, coords = inputs(torch.float64, seed=7)
    weights = torch.softmax(torch.randn(coords.shape[:4], dtype=torch.float64), dim=-1)
    upstream = torch.randn(2, key.shape[1], 9, 11, dtype=torch.float64)
    grads = []
    for op in (True, False):
        leaves = [t.clone().requires_grad_() for t in (key, coords, weights)]
        out = ops.weighted_sample(*leaves) if op else ops._sampled_sum(*leaves)
        out.backward(upstream)
        grads.append([t.grad for t in leaves])
    for name, fast, slow in zip(("source", "coords", "weights"), *grads):
        torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0, msg=name)
    only_coords = [coords.clone().requires_grad_() for _ in range(2)]  # the other inputs want no gradient
    ops.weighted_sample(key, only_coords[0], weights).sum().backward()
    ops._sampled_sum(key, only_coords[1], weights).sum().backward()
    torch.testing.assert_close(only_coords[0].grad, only_coords[1].grad, atol=1e-12, rtol=0)


@needs_kernels
def test_weighted_samples_reject_mismatched_shapes():
    _, key, coords = inputs(torch.float32)
    with pytest.raises(RuntimeError, match="weights"):
        kernels.extension().weighted_samples(key.permute(0, 2, 3, 1).contiguous(), coords, torch.rand(2, 9, 11, 5))


@needs_kernels
@pytest.mark.parametrize("b", [1, 2])
def test_a_level_without_autograd_equals_its_tensor_code(monkeypatch, tensor_code, b):
    """The warp and the GRU's first input from the kernel, the offsets pooled from their channels-last
    view: the level's coords, scores and warp equal the tensor code's (float64, so rounding cannot flip
    a near-tie in the search), for one image and for a batch."""
    torch.manual_seed(0)
    level = patchmatch.PatchMatchGRU(6, num_candidates=4, iters=2, hidden_dim=8).eval().double()
    query, key = (F.normalize(torch.randn(b, 6, 10, 12, dtype=torch.float64), dim=1) for _ in range(2))
    colors = torch.rand(b, 3, 10, 12, dtype=torch.float64)

    def run():
        with torch.no_grad():
            return level(query, key, colors, generator=torch.Generator().manual_seed(1))

    spy = Spy({"weighted_samples"})
    monkeypatch.setattr(kernels, "extension", lambda: spy)
    fast = run()
    assert len(spy.calls) == 2  # the GRU's first input and the warp
    tensor_code()
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
