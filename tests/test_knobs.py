"""Every PatchMatch setting is a per-level config key, and each one changes behaviour; levels follow the widths."""

import pytest
import torch

import cocosnet.models.patchmatch as pm
from cocosnet.config import ConfigError, config_from_dict, read_yaml
from cocosnet.models import ops
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.correspondence import HierarchicalCorrespondence, dense_match, upsample_candidates
from cocosnet.models.patchmatch import PatchMatchGRU
from tests.helpers import ROOT, coarse_init, corr_config, inputs, planted


def test_gru_off_is_search_only_the_final_positions_are_the_searched_ones():
    query, key, truth = planted(32, 32, seed=2)
    init = coarse_init(truth)
    colors = torch.rand(1, 3, 32, 32)
    level = PatchMatchGRU(16, num_candidates=8, iters=3, gru=False).train()
    assert not list(level.parameters())
    coords, _, _ = level(query, key, colors, init=init, generator=torch.Generator().manual_seed(4))
    searched, _ = pm.patch_match(query, key, k=8, iters=3, init=init, generator=torch.Generator().manual_seed(4))
    assert torch.equal(coords, searched)
    moved, _, _ = PatchMatchGRU(16, num_candidates=8, iters=3).train()(
        query, key, colors, init=init, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(moved, searched)  # the GRU's deltas move them


def test_one_handed_down_candidate_starts_every_finer_level_from_the_coarse_best(monkeypatch):
    seen = []
    original = PatchMatchGRU.forward

    def record(self, query, key, colors, init=None, generator=None, **kwargs):
        seen.append(init)
        return original(self, query, key, colors, init=init, generator=generator, **kwargs)

    monkeypatch.setattr(PatchMatchGRU, "forward", record)
    cfg = corr_config(handed_down=[1, 1, 1])
    corr = HierarchicalCorrespondence(8, cfg.model.correspondence)
    g = torch.Generator().manual_seed(0)
    query = [torch.nn.functional.normalize(torch.randn(1, 8, s, s, generator=g), dim=1) for s in (4, 8, 16, 32)]
    key = [torch.nn.functional.normalize(torch.randn(1, 8, s, s, generator=g), dim=1) for s in (4, 8, 16, 32)]
    out = corr(query, key, torch.rand(1, 3, 32, 32))
    assert [init.shape[3] for init in seen] == [1, 1, 1]
    for i, init in enumerate(seen):
        best = out.coords[i][..., :1, :]
        expected = upsample_candidates(best, tuple(query[i + 1].shape[-2:]), tuple(key[i + 1].shape[-2:]),
                                       tuple(key[i].shape[-2:]))
        assert torch.equal(init, expected)
    seen.clear()
    HierarchicalCorrespondence(8, corr_config(handed_down=[3, 2, 4]).model.correspondence)(query, key,
                                                                                           torch.rand(1, 3, 32, 32))
    assert [init.shape[3] for init in seen] == [3, 2, 4]
    _, _, dense_coords, _ = dense_match(query[0], key[0], torch.rand(1, 3, 4, 4), temperature=0.01, k=3, cycle=False)
    assert torch.equal(seen[0], upsample_candidates(dense_coords, (8, 8), (8, 8), (4, 4)))


@pytest.mark.parametrize("samples,radius", [(0, 4.0), (4, 4.0), (6, 1.5)])
def test_random_search_count_and_radius(monkeypatch, samples, radius):
    steps = []
    original = ops.search_step

    def record(query, key, coords, scores, jitter, m):
        steps.append((coords.clone(), jitter.clone(), m))
        return original(query, key, coords, scores, jitter, m)

    monkeypatch.setattr(ops, "search_step", record)
    query, key, truth = planted(16, 16, seed=1)
    level = PatchMatchGRU(16, num_candidates=4, iters=2, gru=False, search_radius=radius, search_samples=samples)
    level(query, key, torch.rand(1, 3, 16, 16), init=coarse_init(truth), generator=torch.Generator().manual_seed(0))
    assert len(steps) == 2 and all(m == 1 for *_, m in steps)  # k = 4: one candidate from each neighbour
    for it, (_, jitter, _) in enumerate(steps):
        assert jitter.shape[3] == samples
        if samples:  # sample i lies within radius / 2^(it + i) of the best, and they spread to it
            limits = radius * 0.5 ** (it + torch.arange(samples, dtype=jitter.dtype))
            assert (jitter.abs() <= limits[:, None] + 1e-6).all()
            assert jitter[..., 0, :].abs().amax() > limits[0] / 4
    coords = torch.tensor([[4.0, 4.0], [9.0, 9.0]]).expand(1, 3, 3, 2, 2).contiguous()
    new = ops.neighbour_candidates(coords, 1)
    assert new.shape[3] == 4 and new[0, 1, 1].tolist() == [[5, 4], [3, 4], [4, 5], [4, 3]]


def test_iterations_and_update_stride_per_level(monkeypatch):
    steps, grids = [], []
    original_step, original_update = pm.search_step, PatchMatchGRU._update
    monkeypatch.setattr(pm, "search_step", lambda *a, **k: steps.append(1) or original_step(*a, **k))

    def update(self, h, scores, offsets, cost=None):
        grids.append((self.stride, tuple(h.shape[-2:])))
        return original_update(self, h, scores, offsets, cost)

    monkeypatch.setattr(PatchMatchGRU, "_update", update)
    cfg = corr_config(iters=[1, 3, 2], update_stride=[1, 2, 4])
    model = CoCosNet.from_config(cfg)
    label, exemplar, exemplar_label, _ = inputs(32)
    model(label, exemplar, exemplar_label)
    assert len(steps) == 1 + 3 + 2
    assert sorted(set(grids)) == [(1, (8, 8)), (2, (8, 8)), (4, (8, 8))]  # 8/1, 16/2 and 32/4


def test_rerank_starts_from_the_search_ranking_learns_and_can_change_the_first_candidate():
    query, key, truth = planted(16, 16, seed=3)
    init = coarse_init(truth)
    colors = torch.rand(1, 3, 16, 16)
    torch.manual_seed(0)
    plain = PatchMatchGRU(16, num_candidates=4, iters=2, update_stride=1).train()
    torch.manual_seed(0)
    level = PatchMatchGRU(16, num_candidates=4, iters=2, update_stride=1, rerank=True).train()
    level.load_state_dict(plain.state_dict(), strict=False)
    run = lambda m: m(query, key, colors, init=init, generator=torch.Generator().manual_seed(1))  # noqa: E731
    (c0, s0, w0), (c1, s1, w1) = run(plain), run(level)
    assert torch.equal(c0, c1) and torch.allclose(s0, s1) and torch.allclose(w0, w1)  # zero bias at the start
    w1.abs().mean().backward()
    assert level.update.rerank[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():  # a bias that favours the last candidate everywhere puts it first
        level.update.rerank[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))
    c2, _, _ = run(level)
    assert (c2[..., 0, :] != c1[..., 0, :]).any(-1).float().mean() > 0.9
    assert not PatchMatchGRU(16, num_candidates=4, gru=False, rerank=True).rerank  # search only: nothing to rerank


def test_lookup_hands_the_gru_the_cost_surface_around_each_candidate():
    query, key, truth = planted(16, 16, seed=4, noise=0.0)
    level = PatchMatchGRU(16, num_candidates=2, iters=1, update_stride=1, lookup=1).eval()
    assert len(level.lookup) == 8 and level.update.corr_enc[0].in_channels == 2 * 9
    # candidate 0 one pixel left of the truth, candidate 1 on it: the first sees the cost rise to its right
    coords = torch.stack([truth - torch.tensor([1.0, 0.0]), truth], dim=3).clamp(1, 14)
    scores = ops.candidate_scores(query, key, coords)
    flat = level._cost_window(query, key, coords, scores)  # (B, H, W, k * 8)
    cost = flat.view(1, 16, 16, 2, 8)
    right = level.lookup.index((1, 0))
    inner = (truth[..., 0] > 2) & (truth[..., 0] < 13) & (truth[..., 1] > 1) & (truth[..., 1] < 14)
    assert (cost[..., 0, right][inner] > 0).float().mean() > 0.9  # towards the truth the cosine rises
    assert (cost[..., 1, :][inner] <= 1e-4).float().mean() > 0.9  # on the truth every neighbour is lower
    # the update reads it: a different surface, different moves
    h = torch.zeros(1, 32, 16, 16)
    _, d0, _ = level._update(h, scores, coords, flat)
    _, d1, _ = level._update(h, scores, coords, -flat)
    assert not torch.equal(d0, d1)
    assert PatchMatchGRU(16, num_candidates=2, lookup=0).update.corr_enc[0].in_channels == 2  # off: as before


@pytest.mark.parametrize("levels", [3, 5])
def test_the_number_of_levels_follows_the_widths(levels):
    cfg = corr_config(levels)
    model = CoCosNet.from_config(cfg)
    size = 2 ** (levels - 1) * 4
    label, exemplar, exemplar_label, real = inputs(size)
    out = model(label, exemplar, exemplar_label, real=real, cycle=True)
    assert len(model.matcher.correspondence.levels) == levels - 1
    assert [w.shape[-1] for w in out.correspondence.warps] == [size // 2 ** (levels - 1 - i) for i in range(levels)]
    loss = out.image.abs().mean() + sum(w.abs().mean() for w in out.correspondence.warps)
    loss.backward()
    grads = [p.grad for p in model.matcher.correspondence.levels[-1].update.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_per_level_lists_must_fit_the_levels():
    raw = read_yaml(ROOT / "params.yaml")
    raw["model"]["correspondence"]["iters"] = [3, 3]
    with pytest.raises(ConfigError, match=r"model\.correspondence\.iters must list 3 values"):
        config_from_dict(raw)
    raw = read_yaml(ROOT / "params.yaml")
    raw["model"]["correspondence"]["handed_down"] = [8, 9, 8]
    with pytest.raises(ConfigError, match=r"handed_down\[1\] \(9\) must not exceed"):
        config_from_dict(raw)
    raw = read_yaml(ROOT / "params.yaml")
    raw["model"]["align"]["widths"] = [32, 16, 16, 16, 8]
    raw["model"]["correspondence"] = {k: (v + v[:1] if isinstance(v, list) else v)
                                      for k, v in raw["model"]["correspondence"].items()}
    config_from_dict(raw)  # 5 levels: 64 px crops divide by 16
    raw["data"]["crop_size"] = 72
    with pytest.raises(ConfigError, match=r"data\.crop_size \(72\) must be divisible by 16 \(5 pyramid levels\)"):
        config_from_dict(raw)
