"""The ranking term (loss_weights.rank, cocosnet/losses/ranking.py)."""

import dataclasses

import pandas as pd
import pytest
import torch

from cocosnet.config import ConfigError, config_from_dict
from cocosnet.data.dataset import PairDataset
from cocosnet.losses.objective import correspondence_terms
from cocosnet.losses.ranking import FLOW_GAMMA, patch_costs, ranking_loss, truth_flow_loss, truth_ranking_loss
from cocosnet.metrics.correspondence import batch_gt
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.inputs import PRETRAIN, training_pairs
from cocosnet.train.loop import batches
from cocosnet.train.trainer import CorrespondenceTrainer
from tests.helpers import CPU, prepare_data, tiny_params, tiny_training_config
from tests.test_models import batch, tiny_config


def shifted_pair(shift=(3, 2), size=16, seed=0):
    """An exemplar of random texture and a target that is the exemplar moved by `shift` (x, y) pixels,
    with the true exemplar position of every target pixel."""
    g = torch.Generator().manual_seed(seed)
    exemplar = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    dx, dy = shift
    target = torch.roll(exemplar, shifts=(dy, dx), dims=(2, 3))
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    truth = torch.stack([(xs - dx) % size, (ys - dy) % size], -1).float()[None]  # (1, H, W, 2)
    return exemplar, target, truth


def candidates(truth, true_slot, k=4, seed=1):
    """k candidates per pixel: the true position in `true_slot`, random wrong ones elsewhere."""
    g = torch.Generator().manual_seed(seed)
    h, w = truth.shape[1:3]
    coords = torch.randint(0, h, (1, h, w, k, 2), generator=g).float()
    coords[..., true_slot, :] = truth
    return coords


def test_the_true_candidate_has_the_lowest_patch_cost():
    exemplar, target, truth = shifted_pair()
    coords = candidates(truth, true_slot=2)
    cost = patch_costs(exemplar, target, coords)
    assert cost.shape == (1, 16, 16, 4)
    # whole patches only: neither the target's nor the exemplar's crosses an edge or the roll's seam
    inside = ((truth >= 1) & (truth <= 14)).all(-1)
    inside[:, [0, -1]] = False
    inside[:, :, [0, -1]] = False
    assert inside.sum() > 100
    assert cost[..., 2][inside].max() < 1e-6
    inner = cost[inside]
    assert (inner[:, 2] <= inner.min(-1).values).all()  # a random wrong candidate may land on the truth too
    assert (inner.argmin(-1) == 2).float().mean() > 0.95


def test_the_loss_is_lowest_when_the_true_candidate_ranks_first_and_ref_pairs_do_not_count():
    exemplar, target, truth = shifted_pair()
    coords = candidates(truth, true_slot=1)
    losses = {}
    for first in range(4):
        scores = torch.zeros(1, 16, 16, 4)
        scores[..., first] = 0.05  # a clear winner at temperature 0.01
        losses[first] = ranking_loss([scores], [coords], exemplar=exemplar, real=target, self_ref=torch.ones(1),
                                     temperature=0.01).item()
    assert min(losses, key=losses.get) == 1
    assert all(losses[1] < 0.5 * losses[other] for other in (0, 2, 3))
    scores = torch.zeros(1, 16, 16, 4, requires_grad=True)
    loss = ranking_loss([scores], [coords], exemplar=exemplar, real=target, self_ref=torch.ones(1), temperature=0.01)
    loss.backward()
    assert (scores.grad[..., 1] < 0).float().mean() > 0.9  # descending the loss raises the true candidate
    ref = ranking_loss([scores], [coords], exemplar=exemplar, real=target, self_ref=torch.zeros(1), temperature=0.01)
    assert ref.item() == 0


def training_match(model):
    """The matcher's training-mode output on a fixed random 32 px batch, with that batch's photo and exemplar."""
    label, exemplar, exemplar_label, real = batch(32, 32)
    out = model.matcher(label, exemplar, exemplar_label, real=real, generator=torch.Generator().manual_seed(0))
    return out, real, exemplar


def test_the_term_reaches_the_features_and_the_gru_and_is_computed_only_when_asked():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = CoCosNet.from_config(cfg)
    out, real, exemplar = training_match(model)
    kwargs = dict(real=real, exemplar=exemplar, self_ref=torch.ones(2))
    assert "rank" not in correspondence_terms(out, **kwargs)
    terms = correspondence_terms(out, **kwargs, rank_temperature=cfg.model.correspondence.temperature)
    assert torch.isfinite(terms["rank"]) and terms["rank"] > 0
    terms["rank"].backward()
    grads = {n: p.grad for n, p in model.matcher.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("align_label"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("align_exemplar"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".gru." in n or "update" in n)


def _reranking_config(rank_grad):
    cfg = tiny_config()
    c = dataclasses.replace(cfg.model.correspondence, rerank=(True, True, True), rank_grad=rank_grad)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, correspondence=c))


@pytest.mark.parametrize("rank_grad", ["features", "head"])
def test_rank_grad_head_trains_the_reranking_head_alone(rank_grad):
    """head: the ranking term's gradient reaches the GRU and its re-ranking head, not the matching features;
    the scores themselves (and so the warp) are the same either way."""
    torch.manual_seed(0)
    cfg = _reranking_config(rank_grad)
    model = CoCosNet.from_config(cfg)
    with torch.no_grad():  # a live head: it starts at zero, and its input weights get no gradient through zeros
        for level in model.matcher.correspondence.levels:
            level.update.rerank[-1].weight.normal_(std=0.1)
    out, real, exemplar = training_match(model)
    corr = out.correspondence
    for scores, head in zip(corr.scores, corr.head_scores):
        torch.testing.assert_close(head, scores.detach())
    terms = correspondence_terms(out, real=real, exemplar=exemplar, self_ref=torch.ones(2),
                                 rank_temperature=cfg.model.correspondence.temperature, head_only=rank_grad == "head")
    terms["rank"].backward()
    touched = {"rerank" if "rerank" in n else "gru" if n.startswith("correspondence.") else "features"
               for n, p in model.matcher.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"rerank", "gru"} <= touched
    assert ("features" in touched) is (rank_grad == "features"), touched


def test_rank_grad_head_needs_a_reranking_head(tmp_path):
    raw = tiny_params(tmp_path, tmp_path)
    raw["model"]["correspondence"]["rank_grad"] = "head"
    with pytest.raises(ConfigError, match="rank_grad is head.*rerank"):
        config_from_dict(raw)
    raw["model"]["correspondence"]["rerank"] = [False, True, False]
    assert config_from_dict(raw).model.correspondence.rank_grad == "head"


@pytest.mark.parametrize("weight", [0.0, 10.0])
def test_the_rank_weight_changes_pretraining_only_when_nonzero(weight):
    label, exemplar, exemplar_label, real = batch(32, 32)
    b = {"label": label, "exemplar": exemplar, "exemplar_label": exemplar_label, "image": real,
         "self_ref": torch.ones(2), "index": torch.tensor([0, 1])}
    results = {}
    for w in (0.0, weight):
        torch.manual_seed(0)
        cfg = tiny_config()
        model = CoCosNet.from_config(cfg)
        trainer = CorrespondenceTrainer(model, cfg.pretrain, dataclasses.replace(cfg.loss_weights, rank=w),
                                        device=torch.device("cpu"))
        metrics = trainer.step(b, 1)
        results[w] = (metrics, [p.detach().clone() for p in model.matcher.parameters()])
    base, other = results[0.0], results[weight]
    assert ("rank" in other[0]) is (weight > 0)
    same = all(torch.equal(p, q) for p, q in zip(base[1], other[1]))
    assert same is (weight == 0)


def test_the_truth_term_is_lowest_when_the_true_candidate_ranks_first_and_ignores_what_is_out_of_reach():
    _, _, truth = shifted_pair()
    coords = candidates(truth, true_slot=3)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    losses = {}
    for first in range(4):
        scores = torch.zeros(1, 16, 16, 4)
        scores[..., first] = 0.05
        losses[first] = truth_ranking_loss([scores], [coords], truth=truth, valid=valid, temperature=0.01).item()
    assert min(losses, key=losses.get) == 3 and losses[3] < 0.1 < min(losses[0], losses[1], losses[2])
    far = truth.unsqueeze(-2).expand(1, 16, 16, 4, 2) + 40.0  # every candidate beyond TRUTH_REACH
    scores = torch.zeros(1, 16, 16, 4, requires_grad=True)
    assert truth_ranking_loss([scores], [far], truth=truth, valid=valid, temperature=0.01).item() == 0
    assert truth_ranking_loss([scores], [coords], truth=truth, valid=~valid, temperature=0.01).item() == 0
    truth_ranking_loss([scores], [coords], truth=truth, valid=valid, temperature=0.01).backward()
    assert (scores.grad[..., 3] < 0).float().mean() > 0.95  # (a random candidate may sit on the truth too)


@pytest.mark.parametrize("term", ["rank_truth", "flow_truth"])
def test_the_truth_terms_need_synthetic_data_without_flips(tmp_path, term):
    raw = dataclasses.asdict(tiny_config())
    raw["loss_weights"][term] = 1.0
    config_from_dict(raw)
    for key, value, named in (("data", {"source": "deepfashion"}, "data.source synthetic"),
                              ("train", {"flip": True}, "train.flip")):
        bad = dataclasses.asdict(tiny_config())
        bad["loss_weights"][term] = 1.0
        bad[key].update(value)
        with pytest.raises(ConfigError, match=f"loss_weights.{term}.*{named}"):
            config_from_dict(bad)
    with pytest.raises(ValueError, match="flip"):
        PairDataset(pd.DataFrame(columns=["target", "exemplar", "kind"]), tmp_path, load_size=72, crop_size=64,
                    random_crop=True, flip=True, truth_root=tmp_path)


@pytest.mark.parametrize("term", ["rank_truth", "flow_truth"])
def test_training_batches_carry_the_true_matches_and_the_term_trains_the_matcher(tiny_raw, tmp_path, term):
    prepare_data(tiny_raw, tmp_path / "processed")
    cfg = tiny_training_config(tiny_raw, tmp_path / "processed", crop=32)
    pairs = pd.read_parquet(tmp_path / "processed" / "pairs.parquet")
    plain = next(iter(batches(cfg, PRETRAIN, pairs, CPU, 0)))
    assert "truth" not in plain
    cfg = dataclasses.replace(cfg, loss_weights=dataclasses.replace(cfg.loss_weights, **{term: 1.0}))
    b = next(iter(batches(cfg, PRETRAIN, pairs, CPU, 0)))
    gt, valid = batch_gt(tiny_raw, training_pairs(pairs), b, load_size=72, crop=32)
    assert torch.equal(b["truth"], gt) and torch.equal(b["truth_valid"], valid) and valid.any()
    assert torch.equal(b["image"], plain["image"])  # the same crops
    params = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = CoCosNet.from_config(cfg)
        weights = dataclasses.replace(cfg.loss_weights, **{term: weight})
        metrics = CorrespondenceTrainer(model, cfg.pretrain, weights, device=torch.device("cpu")).step(b, 1)
        on = {k for k in ("rank", "rank_truth", "flow_truth") if k in metrics}
        assert on == ({term} if weight > 0 else set())  # only the terms that are on
        params[weight] = [p.detach().clone() for p in model.matcher.parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(params[0.0], params[1.0]))


def test_with_features_an_unreached_truth_joins_the_candidates_and_trains_the_features():
    _, _, truth = shifted_pair()
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    far = truth.unsqueeze(-2).expand(1, 16, 16, 4, 2) + 40.0
    g = torch.Generator().manual_seed(3)
    key = torch.nn.functional.normalize(torch.randn(1, 8, 16, 16, generator=g), dim=1).requires_grad_(True)
    # the query of every pixel equals the key at its true match: the truth scores 1, the rest less
    query = key.detach()[:, :, truth[0, ..., 1].long(), truth[0, ..., 0].long()].clone().requires_grad_(True)
    scores = torch.zeros(1, 16, 16, 4)
    loss = truth_ranking_loss([scores], [far], truth=truth, valid=valid, temperature=0.01, features=[(query, key)])
    assert loss.item() < 1e-3  # the truth, scored 1 against 0, already wins
    low = truth_ranking_loss([scores + 2.0], [far], truth=truth, valid=valid, temperature=0.01,
                             features=[(query, key)])
    assert low.item() > 10  # candidates scored above the truth: a large loss
    low.backward()
    assert key.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


def test_the_flow_term_measures_the_nearest_candidate_within_reach_and_weights_later_iterations_more():
    _, _, truth = shifted_pair()
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    wrong = truth.unsqueeze(-2).expand(1, 16, 16, 4, 2) + 40.0  # all beyond reach

    def trail_with(slot_offset):
        coords = wrong.clone()
        coords[..., 2, :] = truth + torch.tensor(slot_offset)  # one candidate near the truth
        return coords

    def flow(trail):
        return truth_flow_loss([[], trail], truth=truth, valid=valid).item()

    assert flow([trail_with([0.0, 0.0])] * 2) == 0  # on the truth
    assert flow([wrong] * 2) == 0 and flow([trail_with([4.0, 0.0])]) == 0  # out of reach: not counted
    one_off = trail_with([1.0, 1.0])  # L1 distance 2
    assert flow([one_off]) == pytest.approx(2.0)
    early, late = flow([one_off, trail_with([0.0, 0.0])]), flow([trail_with([0.0, 0.0]), one_off])
    assert early == pytest.approx(2.0 * FLOW_GAMMA) and late == pytest.approx(2.0)
    assert truth_flow_loss([[one_off]], truth=truth, valid=~valid).item() == 0


def test_the_flow_term_trains_the_gru_through_its_moves():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = CoCosNet.from_config(cfg)
    out, real, exemplar = training_match(model)
    trails = out.correspondence.trails
    assert [len(t) for t in trails] == [0, *cfg.model.correspondence.iters]
    # the truth: each pixel's first candidate, moved by one level pixel, so that every pixel is within reach
    level = trails[-1][-1]
    truth = (level[..., 0, :].detach() + 1.0).clamp(0, 31)
    loss = truth_flow_loss(trails, truth=truth, valid=torch.ones(2, 32, 32, dtype=torch.bool))
    assert loss > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.matcher.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".update.head." in n for n in grads)  # the deltas' head: the GRU learns where to move
