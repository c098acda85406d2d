"""The memory policy (cocosnet/models/memory.py) changes where tensors live and when they are computed,
never the values: the whole network with every choice taken (everything checkpointed, tiled, chunked,
channels-last) equals the same network run plainly, in training and at inference."""

import copy

import pytest
import torch

from cocosnet.models import memory
from cocosnet.models.cocosnet import CoCosNet
from tests.helpers import corr_config, inputs


@pytest.fixture
def every_choice(monkeypatch):
    """Thresholds so low that the tiny network takes every path of the policy."""
    monkeypatch.setattr(memory, "CHECKPOINT_MIN_ELEMENTS", 0)
    monkeypatch.setattr(memory, "SPADE_TILE_ELEMENTS", 64)
    monkeypatch.setattr(memory, "DENSE_CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(memory, "SCORE_CHUNK", 1)
    monkeypatch.setattr(memory, "WARP_CHUNK_ELEMENTS", 1)


def run(model, *, train: bool):
    label, exemplar, exemplar_label, target = inputs(32, seed=3)
    model = copy.deepcopy(model).train(train)  # the same spectral-norm vectors for both runs
    with torch.set_grad_enabled(train):
        out = model(label, exemplar, exemplar_label, generator=torch.Generator().manual_seed(1))
        if not train:
            return out, []
        ((out.image - target).abs().mean() + sum(w.abs().mean() for w in out.correspondence.warps)).backward()
    return out, [p.grad for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_the_policy_changes_no_value(every_choice, monkeypatch, train):
    torch.manual_seed(0)
    model = CoCosNet.from_config(corr_config())
    checkpoints = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: checkpoints.append(1) or real(*a, **k))
    with_policy, grads = run(model, train=train)
    assert bool(checkpoints) == train  # the policy was really on
    checkpoints.clear()
    with memory.plain():
        assert not memory.active()
        plain, plain_grads = run(model, train=train)
    assert not checkpoints
    # float32 (the matching is fp32 by design): tiles and layouts round differently, which may flip a rare
    # near-tie in the discrete search, never the result at large
    torch.testing.assert_close(with_policy.image, plain.image, rtol=0, atol=1e-4)
    for a, b in zip(with_policy.correspondence.coords, plain.correspondence.coords):
        close = ((a - b).abs().amax(-1) < 1e-3).float().mean()
        assert close >= 0.98, close
    assert len(grads) == len(plain_grads) > 0 or not train
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_environment_switch(monkeypatch):
    assert memory.active()
    monkeypatch.setenv(memory.ENV, "0")
    assert not memory.active() and memory.score_chunk(16) == 16 and memory.dense_rows(100, 1, 100, cycle=False) is None
    monkeypatch.setenv(memory.ENV, "1")
    assert memory.active() and memory.score_chunk(16) == memory.SCORE_CHUNK
