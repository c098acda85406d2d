"""Loading the official CoCosNet v2 weights, checked against ../shared/fixtures/official_small (files
and outputs made by the official code, see its KEYS.md).

The U-Net comparisons run in float64 as well as float32. At the fixture's perturbed weights this
network's own float32 rounding is about 1e-5 (this model in float32 against float64: 9.1e-6 at the
finest level; the stored float32 outputs against float64: 7e-6), so float32 on another CPU than the
one that wrote the fixture cannot promise 1e-5; float64 measures the implementation.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cocosnet.cli import main as cli
from cocosnet.config import load_config
from cocosnet.errors import WeightsError
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.official import load_official, official_model_config
from cocosnet.train.checkpoint import load_model
from tests.helpers import ROOT

FIXTURE = ROOT.parent / "shared" / "fixtures" / "official_small"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"the official fixture is absent ({FIXTURE})")
CORR, GEN = FIXTURE / "latest_net_Corr.pth", FIXTURE / "latest_net_G.pth"


@pytest.fixture(scope="module")
def io():
    data = torch.load(FIXTURE / "io.pt", weights_only=True)
    u8 = data["inputs"]

    def label(x):
        return x.to(torch.float32) / 255

    def image(x):
        return x.to(torch.float32) / 127.5 - 1

    data["x"] = {"label": label(u8["unet_label_u8"]), "exemplar": image(u8["unet_exemplar_u8"]),
                 "exemplar_label": label(u8["unet_exemplar_label_u8"]), "g_label": label(u8["g_label_u8"]),
                 "warps": [image(u8[f"g_warp{s}_u8"]) for s in (64, 128, 256, 512)]}
    return data


@pytest.fixture(scope="module")
def official():
    return load_official(CORR, GEN)


def unet_outputs(model, x, dtype):
    model = model.to(dtype)
    with torch.no_grad():
        label_feats, theta = model.matcher.align_label(x["label"].to(dtype))
        image_feats, phi = model.matcher.align_exemplar(torch.cat([x["exemplar"], x["exemplar_label"]], 1).to(dtype))
    model.float()
    return {"seg_unet": label_feats, "img_unet": image_feats, "theta": theta, "phi": phi}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 3e-5)])
def test_unets_and_matching_features_equal_the_official_ones(official, io, dtype, tol):
    ours = unet_outputs(official, io["x"], dtype)
    for name in ("seg_unet", "img_unet", "theta", "phi"):
        for level, ref in enumerate(io["outputs"][name]):
            ref = ref.to(dtype)
            if name.endswith("unet"):  # raw official outputs; the project uses them L2-normalised
                ref = F.normalize(ref, dim=1)
            got = ours[name][level]
            assert got.shape == ref.shape, (name, level)
            err = (got - ref).abs().max().item()
            assert err <= tol, f"{name}[{level}] {dtype}: max abs diff {err:.2e} > {tol:.0e}"


def test_generator_at_512_equals_the_official_output(official, io):
    with torch.no_grad():
        out = official.generate(io["x"]["warps"], io["x"]["g_label"])
    err = (out - io["outputs"]["g_out"]).abs().max().item()
    assert out.shape == (1, 3, 512, 512) and err <= 1e-5, f"max abs diff {err:.2e}"


def test_widths_are_read_from_the_shapes_and_the_gru_starts_as_search_only(official):
    cfg = official.config
    assert cfg.align.widths == (32, 32, 16, 8) and cfg.align.match_channels == 8 and cfg.align.spade_hidden == 128
    assert (cfg.generator.ngf, cfg.generator.head_width, cfg.generator.spade_hidden) == (8, 64, 128)
    assert cfg.correspondence.pose_geometry == 0.0 and all(cfg.correspondence.gru)
    assert not official.training
    # The GRU update is exactly zero: the same weights with the GRU switched off give the same matches.
    off = CoCosNet(dataclasses.replace(cfg, correspondence=dataclasses.replace(
        cfg.correspondence, gru=(False,) * len(cfg.correspondence.gru))))
    assert not off.load_state_dict(official.state_dict(), strict=False).missing_keys
    off.eval()
    g = torch.Generator().manual_seed(0)
    x = [torch.rand(1, 20, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,
         torch.rand(1, 20, 64, 64, generator=g)]
    with torch.no_grad():
        a = official.matcher(*x, generator=torch.Generator().manual_seed(1)).correspondence
        b = off.matcher(*x, generator=torch.Generator().manual_seed(1)).correspondence
    for level, (ca, cb) in enumerate(zip(a.coords, b.coords)):
        assert torch.equal(ca, cb), f"level {level}: the loaded GRU moved the candidates"
    # ... and it can learn: its last conv is zero, the rest is not, and a gradient reaches it.
    head = official.matcher.correspondence.levels[-1].update.head[-1]
    assert not head.weight.any() and not head.bias.any()


def _saved(tmp_path, state: dict, name: str) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_a_wrong_key_a_missing_key_and_a_wrong_shape_are_named(tmp_path):
    corr = torch.load(CORR, weights_only=True)
    gen = torch.load(GEN, weights_only=True)
    extra = _saved(tmp_path, {**corr, "adaptive_model_seg.layer9.0.0.weight_orig": torch.zeros(1)}, "extra.pth")
    unexpected = r"unexpected key .*extra\.pth: adaptive_model_seg\.layer9\.0\.0\.weight_orig"
    with pytest.raises(WeightsError, match=unexpected):
        load_official(extra, GEN)
    missing = _saved(tmp_path, {k: v for k, v in gen.items() if k != "up_2.norm_1.mlp_beta.bias"}, "missing.pth")
    with pytest.raises(WeightsError, match=r"missing: .*generator\.blocks\.5\.norm_1\.beta\.bias"):
        load_official(CORR, missing)
    wrong = dict(corr)
    wrong["phi_2.weight"] = torch.zeros(8, 12, 1, 1)
    with pytest.raises(WeightsError, match=r"phi_2\.weight has shape \[8, 12, 1, 1\].*needs \[8, 16, 1, 1\]"):
        load_official(_saved(tmp_path, wrong, "shape.pth"), GEN)
    with pytest.raises(WeightsError, match="missing key 'fc.weight'"):
        load_official(CORR, CORR)  # the Corr file where the G file belongs
    with pytest.raises(WeightsError, match="not a readable state dict"):
        load_official(_text(tmp_path), GEN)


def _text(tmp_path) -> Path:
    path = tmp_path / "notes.pth"
    path.write_text("not weights")
    return path


def test_a_config_that_disagrees_with_the_shapes_is_refused_by_key():
    found = official_model_config(torch.load(CORR, weights_only=True), torch.load(GEN, weights_only=True))
    assert load_official(CORR, GEN, config=found).config == found  # an agreeing config is fine
    wider = dataclasses.replace(found, align=dataclasses.replace(found.align, widths=(64, 64, 32, 16)))
    with pytest.raises(WeightsError, match=r"model\.align\.widths: the config says \[64, 64, 32, 16\], "
                                           r"the weights have \[32, 32, 16, 8\]"):
        load_official(CORR, GEN, config=wider)
    geometry = dataclasses.replace(found, correspondence=dataclasses.replace(found.correspondence, pose_geometry=1.0))
    with pytest.raises(WeightsError, match=r"model\.correspondence\.pose_geometry"):
        load_official(CORR, GEN, config=geometry)
    skip = dataclasses.replace(found, generator=dataclasses.replace(found.generator, warp_skip="residual"))
    with pytest.raises(WeightsError, match=r"model\.generator\.warp_skip: the config says residual"):
        load_official(CORR, GEN, config=skip)
    ngf = dataclasses.replace(found, generator=dataclasses.replace(found.generator, ngf=16))
    with pytest.raises(WeightsError, match=r"model\.generator\.ngf: the config says 16, the weights have 8"):
        load_official(CORR, GEN, config=ngf)


def test_import_official_round_trips_through_the_model_file(official, io, tmp_path, capsys):
    out = tmp_path / "official.pt"
    cli(["import-official", "--corr", str(CORR), "--gen", str(GEN), "--out", str(out),
         "--params", str(ROOT / "params.yaml")])
    said = capsys.readouterr().out
    assert "model.align.widths=[32,32,16,8]" in said and "model.correspondence.pose_geometry=0.0" in said
    assert "model.generator.warp_skip=none" in said
    cfg = dataclasses.replace(load_config(ROOT / "params.yaml"), model=official.config)
    loaded, state = load_model(out, cfg)
    assert state["stage"] == "official"
    loaded.eval()
    ours, theirs = unet_outputs(loaded, io["x"], torch.float32), unet_outputs(official, io["x"], torch.float32)
    for name in ours:
        for a, b in zip(ours[name], theirs[name]):
            assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(loaded.generate(io["x"]["warps"], io["x"]["g_label"]),
                           official.generate(io["x"]["warps"], io["x"]["g_label"]))


def test_import_official_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["import-official", "--corr", str(tmp_path / "nothing.pth"), "--gen", str(GEN), "--out",
             str(tmp_path / "x.pt"), "--params", str(ROOT / "params.yaml")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nothing.pth'}: no such file"
    assert not (tmp_path / "x.pt").exists()


def test_forged_official_weights_are_refused_before_any_large_allocation(tmp_path):
    """A stride-0 tensor declares gigabytes in a few bytes of file; a real tensor can still declare widths
    past any real model; NaN weights draw an all-black image. Each is a WeightsError naming the file."""
    corr = torch.load(CORR, weights_only=True)
    inputs = corr["theta_0.weight"].shape[1]
    stride0 = {**corr, "theta_0.weight": torch.zeros(1).expand(1_000_000, inputs, 1, 1)}
    with pytest.raises(WeightsError, match=r"stride0\.pth: tensor 'theta_0\.weight' declares shape \(1000000, "):
        load_official(_saved(tmp_path, stride0, "stride0.pth"), GEN)
    wide = {**corr, "theta_0.weight": torch.zeros(3000, inputs, 1, 1)}
    with pytest.raises(WeightsError, match=r"out of bounds .*model\.align\.match_channels: expected in \[1, 2048\]"):
        load_official(_saved(tmp_path, wide, "wide.pth"), GEN)
    nan = dict(corr)
    nan["phi_2.weight"] = corr["phi_2.weight"].clone()
    nan["phi_2.weight"][0] = float("nan")
    with pytest.raises(WeightsError, match=r"nan\.pth: tensor 'phi_2\.weight' holds NaN or infinite values"):
        load_official(_saved(tmp_path, nan, "nan.pth"), GEN)
