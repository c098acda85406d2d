import inspect

import pytest
import torch
import torch.nn.functional as F

from cocosnet.models.ops import sample_at, select_top_k
from cocosnet.models.patchmatch import PatchMatchGRU, patch_match, pixel_grid
from tests.helpers import coarse_init, planted


def test_signature_is_the_contract():
    sig = inspect.signature(patch_match)
    assert list(sig.parameters) == ["query", "key", "k", "iters", "init", "generator"]
    assert [p.kind for p in sig.parameters.values()][2:] == [inspect.Parameter.KEYWORD_ONLY] * 4
    assert (sig.parameters["k"].default, sig.parameters["iters"].default) == (16, 5)
    assert sig.parameters["init"].default is None and sig.parameters["generator"].default is None


@pytest.mark.parametrize("size", [64, 128])
def test_recovers_planted_correspondences_from_a_coarse_init(size):
    query, key, truth = planted(size, size, seed=size)
    coords, scores = patch_match(query, key, init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    assert coords.shape == (1, size, size, 16, 2) and scores.shape == (1, size, size, 16)
    err = (coords[..., 0, :] - truth).norm(dim=-1)
    assert (err <= 1.0).float().mean() >= 0.95
    assert (scores[..., :-1] >= scores[..., 1:]).all()


def test_non_square_inputs_and_any_k0():
    query, key, truth = planted(64, 96, seed=3)
    init = torch.cat([coarse_init(truth), coarse_init(truth, seed=5), coarse_init(truth, seed=6)], dim=3)
    coords, scores = patch_match(query, key, k=8, iters=3, init=init, generator=torch.Generator().manual_seed(1))
    assert coords.shape == (1, 64, 96, 8, 2) and scores.shape == (1, 64, 96, 8)
    assert (coords[..., 0] <= 95).all() and (coords[..., 1] <= 63).all() and (coords >= 0).all()
    assert ((coords[..., 0, :] - truth).norm(dim=-1) <= 1.0).float().mean() >= 0.95


def test_self_match_gives_zero_offsets():
    _, key, _ = planted(48, 40, seed=2)
    grid = pixel_grid(1, 48, 40, key.device, key.dtype)[..., 0, :]
    coords, scores = patch_match(key, key, init=coarse_init(grid), generator=torch.Generator().manual_seed(0))
    assert torch.equal(coords[..., 0, :], grid)
    torch.testing.assert_close(scores[..., 0], torch.ones_like(scores[..., 0]))


def test_deterministic_with_a_fixed_generator():
    query, key, _ = planted(32, 32, seed=4)
    a = patch_match(query, key, generator=torch.Generator().manual_seed(7))
    b = patch_match(query, key, generator=torch.Generator().manual_seed(7))
    c = patch_match(query, key, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_scores_are_differentiable_in_query_and_key():
    query, key, truth = planted(24, 24, seed=5)
    query.requires_grad_(True)
    key.requires_grad_(True)
    _, scores = patch_match(query, key, k=4, iters=2, init=coarse_init(truth))
    scores[..., 0].sum().backward()
    assert query.grad.abs().sum() > 0 and key.grad.abs().sum() > 0


def test_duplicates_are_removed_before_top_k():
    coords = torch.tensor([[[[[1.0, 1.0], [1.1, 1.0], [5.0, 5.0], [1.0, 1.0]]]]])
    scores = torch.tensor([[[[0.9, 0.95, 0.1, 0.9]]]])
    out, s = select_top_k(coords, scores, 2, 10, 10)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([[1.1, 1.0], [5.0, 5.0]]))
    assert s[0, 0, 0].tolist() == pytest.approx([0.95, 0.1])


def test_sampling_is_bilinear():
    source = torch.arange(12.0).view(1, 1, 3, 4)
    coords = torch.tensor([[[[[1.5, 0.5]]]]])
    assert sample_at(source, coords).item() == pytest.approx((1 + 2 + 5 + 6) / 4)


def gru_problem(seed=0):
    torch.manual_seed(seed)
    query, key, truth = planted(32, 32, channels=16, seed=seed)
    colors = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    target = sample_at(colors, truth.unsqueeze(3))[..., 0]
    return query, key, colors, target, coarse_init(truth, jitter=3.0)


def test_every_gru_parameter_gets_a_gradient_from_the_warp_loss():
    query, key, colors, target, init = gru_problem()
    level = PatchMatchGRU(16, iters=3).train()
    _, _, warp = level(query, key, colors, init=init, generator=torch.Generator().manual_seed(0))
    (warp - target).abs().mean().backward()
    params = dict(level.named_parameters())
    assert len(params) >= 28
    missing = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_a_few_gru_steps_lower_the_warp_error():
    # Smooth colours and a biased one-iteration start: the search alone cannot
    # finish the job, the GRU has to learn to move the candidates.
    torch.manual_seed(2)
    query, key, truth = planted(32, 32, channels=16, seed=2)
    colors = F.interpolate(torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(2)), size=(32, 32),
                           mode="bicubic", align_corners=True)
    target = sample_at(colors, truth.unsqueeze(3))[..., 0]
    init = (truth + torch.tensor([2.0, -2.0])).unsqueeze(3)
    level = PatchMatchGRU(16, iters=1).train()
    opt = torch.optim.Adam(level.update.parameters(), lr=2e-3)

    def warp_error():
        _, _, warp = level(query, key, colors, init=init, generator=torch.Generator().manual_seed(0))
        return (warp - target).abs().mean()

    with torch.no_grad():
        before = warp_error().item()
    for _ in range(15):
        opt.zero_grad()
        warp_error().backward()
        opt.step()
    with torch.no_grad():
        after = warp_error().item()
    assert after < 0.9 * before


def test_checkpointing_below_the_threshold_is_skipped_and_changes_no_gradient(monkeypatch):
    from cocosnet.models import memory

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    grads = {}
    for threshold in (0, 2**62):  # checkpoint everything, then nothing
        monkeypatch.setattr(memory, "CHECKPOINT_MIN_ELEMENTS", threshold)
        calls.clear()
        query, key, colors, target, init = gru_problem()
        query.requires_grad_(True)
        torch.manual_seed(0)
        level = PatchMatchGRU(16, iters=2).train()
        _, _, warp = level(query, key, colors, init=init, generator=torch.Generator().manual_seed(0))
        (warp - target).abs().mean().backward()
        grads[threshold] = (calls[:], query.grad.clone(), [p.grad.clone() for p in level.parameters()])
    assert grads[0][0] and not grads[2**62][0]  # both paths were taken
    torch.testing.assert_close(grads[0][1], grads[2**62][1], rtol=0, atol=1e-7)
    for a, b in zip(grads[0][2], grads[2**62][2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("gru,iters", [(True, 3), (False, 3), (True, 0)])
def test_the_returned_scores_are_those_of_the_returned_positions_with_and_without_autograd(gru, iters):
    from cocosnet.models.patchmatch import candidate_scores

    query, key, truth = planted(16, 16, seed=3)
    query.requires_grad_(True)
    torch.manual_seed(0)
    level = PatchMatchGRU(query.shape[1], num_candidates=4, iters=iters, gru=gru).eval()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            coords, scores, _ = level(query, key, key[:, :3], init=coarse_init(truth),
                                      generator=torch.Generator().manual_seed(1))
            bare, bare_scores = patch_match(query, key, k=4, iters=iters, generator=torch.Generator().manual_seed(1))
        assert scores.requires_grad == grad and bare_scores.requires_grad == grad
        with torch.no_grad():
            torch.testing.assert_close(scores, candidate_scores(query, key, coords), rtol=0, atol=1e-6)
            torch.testing.assert_close(bare_scores, candidate_scores(query, key, bare), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [8, 16])
def test_the_update_checkpoint_threshold_counts_what_an_update_keeps(k):
    """UPDATE_CHANNELS_KEPT decides which updates are checkpointed; it must match what an update
    really keeps for backward (per pixel of its grid), within 10%."""
    from cocosnet.models.convgru import UpdateBlock
    from cocosnet.models.memory import UPDATE_CHANNELS_KEPT

    update = UpdateBlock(k, 32)
    h = torch.randn(1, 32, 16, 16, requires_grad=True)
    weights = {p.untyped_storage().data_ptr() for p in update.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:  # the activations, which grow with the grid
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        update(h, torch.rand(1, k, 16, 16), torch.randn(1, 2 * k, 16, 16))
    per_pixel = sum(storages.values()) / 4 / (16 * 16)
    assert abs(per_pixel - UPDATE_CHANNELS_KEPT) <= 0.1 * per_pixel, per_pixel


def test_without_autograd_the_update_runs_channels_last_and_agrees_with_the_plain_one():
    torch.manual_seed(0)
    level = PatchMatchGRU(16, iters=1, update_stride=1).eval()
    h = torch.randn(1, 32, 32, 32)
    scores = torch.randn(1, 32, 32, 16)
    offsets = torch.randn(1, 32, 32, 16, 2)
    formats = []
    level.update.register_forward_pre_hook(
        lambda m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        fast = level._update(h, scores, offsets)
    plain = level._update(h, scores, offsets)  # with autograd: the plain layout
    assert formats == [True, False]
    for a, b in zip(fast[:2], plain[:2]):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-5)
