"""Mixed precision on the CPU (`train/precision.py`): when a step autocasts, that the matching stays fp32
under autocast, and that both trainers train in bf16 on the CPU."""

import dataclasses
import warnings

import pytest
import torch

from cocosnet.losses.vgg import load_vgg19
from cocosnet.models.cocosnet import CoCosNet, build_discriminator
from cocosnet.models.correspondence import HierarchicalCorrespondence
from cocosnet.train import precision
from cocosnet.train.precision import autocast_dtype
from cocosnet.train.trainer import CorrespondenceTrainer, GanTrainer
from tests.helpers import corr_config, state, tiny_training_config
from tests.test_gpu import batch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU has native bf16, so the bf16 paths run on any CI machine (emulated there, only slower)."""
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)


def test_the_autocast_dtype_follows_the_device_and_the_keys(native):
    for amp_cpu in (False, True):
        assert autocast_dtype(CUDA, amp=True, amp_dtype="float16", amp_cpu=amp_cpu) is torch.float16
        assert autocast_dtype(CUDA, amp=False, amp_dtype="bfloat16", amp_cpu=amp_cpu) is None
    assert autocast_dtype(CPU, amp=True, amp_dtype="bfloat16", amp_cpu=False) is None  # `amp` is CUDA's
    assert autocast_dtype(CPU, amp=False, amp_dtype="float16", amp_cpu=True) is torch.bfloat16  # always bf16


def test_without_native_bf16_the_cpu_warns_and_stays_fp32(monkeypatch):
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert autocast_dtype(CPU, amp=False, amp_dtype="bfloat16", amp_cpu=True) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype(CPU, amp=False, amp_dtype="bfloat16", amp_cpu=False) is None


def _match(model, query, key, exemplar):
    return model(query, key, exemplar, cycle=True, generator=torch.Generator().manual_seed(3))


def test_matching_under_cpu_autocast_is_the_fp32_matching_of_the_same_features():
    """bf16 features (what autocast's convolutions hand over) are matched in fp32: with the search alone the
    result equals the fp32 run on the same values exactly. Were the dense similarities autocast, their
    division by the temperature would turn bf16 rounding into different matches."""
    cfg = corr_config(levels=4, gru=[False] * 3)
    torch.manual_seed(0)
    model = HierarchicalCorrespondence(8, cfg.model.correspondence).train()
    sizes = (4, 8, 16, 32)
    g = torch.Generator().manual_seed(1)
    query = [torch.nn.functional.normalize(torch.randn(1, 8, s, s, generator=g), dim=1).bfloat16() for s in sizes]
    key = [torch.nn.functional.normalize(torch.randn(1, 8, s, s, generator=g), dim=1).bfloat16() for s in sizes]
    exemplar = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    reference = _match(model, [q.float() for q in query], [k.float() for k in key], exemplar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _match(model, query, key, exemplar)
    for name in ("warps", "coords", "scores"):
        for level, (a, b) in enumerate(zip(getattr(mixed, name), getattr(reference, name))):
            assert a.dtype == torch.float32, (name, level, a.dtype)
            assert torch.equal(a, b), f"{name} differ at level {level}"
    assert torch.equal(mixed.cycle_warp, reference.cycle_warp)


def test_the_gru_update_runs_in_bf16_channels_last_while_its_output_positions_stay_fp32():
    cfg = corr_config(levels=3)
    torch.manual_seed(0)
    model = HierarchicalCorrespondence(8, cfg.model.correspondence).train()
    seen = []
    model.levels[-1].update.head.register_forward_hook(
        lambda module, args, out: seen.append((out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
    g = torch.Generator().manual_seed(1)
    query = [torch.randn(1, 8, s, s, generator=g, requires_grad=True) for s in (8, 16, 32)]
    key = [torch.randn(1, 8, s, s, generator=g) for s in (8, 16, 32)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _match(model, query, key, torch.rand(1, 3, 32, 32, generator=g))
    assert seen and all(s == (torch.bfloat16, True) for s in seen), seen
    assert all(c.dtype == torch.float32 for c in out.coords) and all(w.dtype == torch.float32 for w in out.warps)
    out.warps[-1].abs().mean().backward()
    grads = [p.grad for p in model.levels[-1].update.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # the warp loss reaches the GRU in bf16 too


def test_pretrain_with_amp_cpu_trains_in_bf16_close_to_fp32(tmp_path, native):
    losses = {}
    for amp_cpu in (False, True):
        cfg = tiny_training_config(tmp_path, tmp_path, crop=32)
        cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, amp_cpu=amp_cpu))
        torch.manual_seed(0)
        model = CoCosNet.from_config(cfg)
        trainer = CorrespondenceTrainer(model, cfg.pretrain, cfg.loss_weights, device=CPU)
        assert trainer.amp_dtype is (torch.bfloat16 if amp_cpu else None)
        before = state(model.matcher)
        losses[amp_cpu] = [trainer.step(batch(CPU, size=32), step)["loss"] for step in (1, 2)]
        after = state(model.matcher)
        for part in ("align_label", "align_exemplar", "correspondence.levels"):
            assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(part)), part
        assert all(torch.isfinite(p).all() for p in model.matcher.parameters())
    # the first step starts from the same weights: bf16 moves its loss by rounding only
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05), losses


def test_gan_training_with_amp_cpu_trains_every_part(tmp_path, native):
    cfg = tiny_training_config(tmp_path, tmp_path, amp_cpu=True)
    torch.manual_seed(0)
    model, disc = CoCosNet.from_config(cfg), build_discriminator(cfg)
    trainer = GanTrainer(model, disc, load_vgg19("random"), cfg.train, cfg.loss_weights, device=CPU)
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler_g.is_enabled()
    before, before_d = state(model), state(disc)
    for step in (1, 2):
        metrics = trainer.step(batch(CPU), step)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    after = state(model)
    for part in ("matcher.align_label", "matcher.correspondence", "generator"):
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(part)), part
    assert any(not torch.equal(v, before_d[k]) for k, v in state(disc).items())


def test_the_benchmarks_make_the_trainer_autocast_as_their_amp_flag_says(tmp_path, native):
    """bench/matcher.py and bench/train_step.py time the trainers' own steps: `--amp off` must not inherit
    params.yaml's `amp: true` (a CUDA run would be bf16), and `--amp bfloat16` autocasts on the CPU too."""
    from cocosnet.measure.precision import trainer_precision

    cfg = tiny_training_config(tmp_path, tmp_path, crop=32)
    for section in (cfg.pretrain, cfg.train):
        assert section.amp  # the params.yaml default, for CUDA
        off = dataclasses.replace(section, **trainer_precision(section, "off"))
        assert autocast_dtype(CUDA, amp=off.amp, amp_dtype=off.amp_dtype, amp_cpu=off.amp_cpu) is None
        bf16 = dataclasses.replace(section, **trainer_precision(section, "bfloat16"))
        for device in (CPU, CUDA):
            assert autocast_dtype(device, amp=bf16.amp, amp_dtype=bf16.amp_dtype, amp_cpu=bf16.amp_cpu) is torch.bfloat16
