"""The generator knobs of docs/studies/generation.md: the warp skips and the reconstruction term."""

import dataclasses

import pytest
import torch

from cocosnet.config import ADDED_KEYS, ConfigError, config_from_dict, flatten, saved_config
from cocosnet.losses.terms import reconstruction_loss
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.generator import MASK_INIT_LOGIT, SPADEGenerator
from tests.test_models import batch, tiny_config


def with_skip(cfg, skip: str):
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, generator=dataclasses.replace(cfg.model.generator, warp_skip=skip)))


def test_a_blending_generator_returns_the_warp_where_its_mask_is_closed_and_its_image_where_open():
    gen = SPADEGenerator(7, ngf=8, head_width=16, spade_hidden=8, warp_skip="blend")
    cond, warp = torch.rand(2, 7, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    for logit, expect_warp in ((-60.0, True), (60.0, False)):
        with torch.no_grad():
            gen.to_rgb.bias[3] = logit
        out = gen(cond, warp)
        assert torch.allclose(out, warp, atol=1e-6) is expect_warp
    with torch.no_grad():
        gen.to_rgb.bias[3] = 60.0
        gen.to_rgb.weight[3] = 0
    plain = SPADEGenerator(7, ngf=8, head_width=16, spade_hidden=8)
    plain.load_state_dict({k: (v[:3] if k.startswith("to_rgb") else v) for k, v in gen.state_dict().items()})
    assert torch.allclose(gen(cond, warp), plain(cond), atol=1e-6)  # an open mask is the official netG's image


def test_a_residual_generator_starts_as_its_warp_and_learns_a_clamped_correction():
    torch.manual_seed(0)
    model = CoCosNet.from_config(with_skip(tiny_config(), "residual"))
    label, exemplar, exemplar_label, real = batch(32, 32)
    out = model(label, exemplar, exemplar_label)
    assert torch.equal(out.image, out.correspondence.warps[-1])  # a zero correction at the start
    (out.image - real).abs().mean().backward()
    assert model.generator.to_rgb.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.generator.to_rgb.bias.fill_(5.0)
    assert torch.equal(model(label, exemplar, exemplar_label).image, torch.ones(2, 3, 32, 32))


def test_a_blending_model_starts_near_its_finest_warp_and_the_mask_learns():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = CoCosNet.from_config(with_skip(cfg, "blend"))
    label, exemplar, exemplar_label, real = batch(32, 32)
    out = model(label, exemplar, exemplar_label)
    warp = out.correspondence.warps[-1]
    closed = torch.sigmoid(torch.tensor(MASK_INIT_LOGIT))
    # |out - warp| = m |image - warp| <= m * 2 with the mask near its initial value
    assert (out.image - warp).abs().mean() < 2 * closed + 0.05
    assert out.image.abs().max() <= 1
    (out.image - real).abs().mean().backward()
    assert model.generator.to_rgb.weight.grad[3].abs().sum() > 0
    with pytest.raises(ValueError, match="finest warp"):
        model.generator(torch.rand(1, 32, 32, 32))


def test_each_warp_skip_changes_the_output_and_an_unknown_one_is_refused():
    label, exemplar, exemplar_label, _ = batch(32, 32)
    images = {}
    for skip in ("none", "blend", "residual"):
        torch.manual_seed(0)
        model = CoCosNet.from_config(with_skip(tiny_config(), skip))
        images[skip] = model(label, exemplar, exemplar_label, generator=torch.Generator().manual_seed(0)).image
        assert model.generator.to_rgb.weight.shape[0] == (4 if skip == "blend" else 3)
    assert not torch.allclose(images["none"], images["blend"])
    assert not torch.allclose(images["none"], images["residual"])
    assert not torch.allclose(images["blend"], images["residual"])
    with pytest.raises(ValueError, match="warp_skip"):
        SPADEGenerator(7, ngf=8, head_width=16, spade_hidden=8, warp_skip="add")
    raw = dataclasses.asdict(tiny_config())
    raw["model"]["generator"]["warp_skip"] = "add"
    with pytest.raises(ConfigError, match="model.generator.warp_skip"):
        config_from_dict(raw)


def test_the_reconstruction_term_is_l1_over_the_self_pairs_only():
    image, real = torch.zeros(3, 3, 8, 8), torch.zeros(3, 3, 8, 8)
    real[0] += 0.5
    real[1] += 0.2
    real[2] += 1.0  # a ref pair: its target is another photo and does not count
    loss = reconstruction_loss(image, real, torch.tensor([1.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx((0.5 + 0.2) / 2, rel=1e-4)
    assert reconstruction_loss(image, real, torch.zeros(3)).item() == 0


def test_a_config_saved_before_the_added_keys_loads_with_their_official_values():
    raw = dataclasses.asdict(tiny_config())
    del raw["model"]["generator"]["warp_skip"]
    del raw["loss_weights"]["recon"]
    del raw["model"]["refiner"], raw["refine"]
    with pytest.raises(ConfigError, match="missing key"):
        config_from_dict(raw)  # params.yaml itself must still name every key
    cfg = config_from_dict(saved_config(raw))
    assert cfg.model.generator.warp_skip == "none" and cfg.loss_weights.recon == 0.0
    assert cfg.model.refiner.width == 0 and cfg.refine.steps == 0  # no refiner: the official model
    assert set(ADDED_KEYS) <= set(flatten(dataclasses.asdict(cfg)))
    current = dataclasses.asdict(with_skip(tiny_config(), "blend"))
    assert saved_config(current) == current  # a key present is never overwritten
