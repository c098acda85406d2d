import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cocosnet.config import load_config
from cocosnet.errors import WeightsError
from cocosnet.losses import LOSS_KEYS, weighted_total
from cocosnet.losses.contextual import contextual_loss, contextual_loss_naive
from cocosnet.losses.objective import discriminator_terms, generator_terms
from cocosnet.losses.vgg import CONVS, TORCHVISION_INDEX, VGG19, load_vgg19
from cocosnet.models import memory
from cocosnet.models.blocks import PositionalNorm, SPADEResBlock
from cocosnet.models.cocosnet import CoCosNet, build_discriminator
from cocosnet.models.correspondence import dense_match, upsample_candidates
from tests.helpers import ROOT


def tiny_config():
    cfg = load_config(ROOT / "params.yaml")
    m = cfg.model
    model = dataclasses.replace(
        m, align=dataclasses.replace(m.align, widths=(16, 16, 8, 8), match_channels=8, spade_hidden=8),
        correspondence=dataclasses.replace(m.correspondence, num_candidates=(4, 4, 4), iters=(2, 2, 2),
                                          handed_down=(4, 4, 4), gru_hidden=8),
        generator=dataclasses.replace(m.generator, ngf=8, head_width=16, spade_hidden=8),
        discriminator=dataclasses.replace(m.discriminator, ndf=8))
    return dataclasses.replace(cfg, model=model)


def batch(h, w, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 20, h, w, generator=g), torch.rand(b, 3, h, w, generator=g) * 2 - 1,
            torch.rand(b, 20, h, w, generator=g), torch.rand(b, 3, h, w, generator=g) * 2 - 1)


@pytest.mark.parametrize("h,w", [(64, 64), (64, 96)])
def test_shapes_of_the_whole_model(h, w):
    cfg = tiny_config()
    model, disc = CoCosNet.from_config(cfg), build_discriminator(cfg)
    label, exemplar, exemplar_label, real = batch(h, w)
    out = model(label, exemplar, exemplar_label, real=real, cycle=True)
    assert out.image.shape == (2, 3, h, w) and out.image.abs().max() <= 1
    corr = out.correspondence
    assert [tuple(x.shape[-2:]) for x in corr.warps] == [(h // 8, w // 8), (h // 4, w // 4), (h // 2, w // 2), (h, w)]
    assert corr.cycle_warp.shape == (2, 3, h // 8, w // 8)
    assert corr.coords[-1].shape == (2, h, w, 4, 2)
    assert [f.shape[1] for f in out.label_feats] == [16, 16, 8, 8]
    scales = disc(torch.cat([label, out.image], 1))
    assert len(scales) == 2 and all(len(s) == 5 for s in scales)
    assert scales[1][-1].shape[-1] < scales[0][-1].shape[-1]
    assert not any(p.grad is not None for p in disc.parameters())


def test_losses_are_finite_with_the_params_keys_and_reach_every_module():
    cfg = tiny_config()
    model, disc = CoCosNet.from_config(cfg), build_discriminator(cfg)
    label, exemplar, exemplar_label, real = batch(64, 64)
    out = model(label, exemplar, exemplar_label, real=real, cycle=True, geometry_warp=True)
    terms = generator_terms(out, label=label, real=real, exemplar=exemplar, self_ref=torch.tensor([1.0, 0.0]),
                            disc=disc, vgg=VGG19(), rank_temperature=cfg.model.correspondence.temperature,
                            truth=(torch.rand(2, 64, 64, 2) * 63, torch.ones(2, 64, 64, dtype=torch.bool)), flow=True)
    assert set(terms) == set(LOSS_KEYS) == {f.name for f in dataclasses.fields(cfg.loss_weights)}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    weighted_total(terms, dataclasses.asdict(cfg.loss_weights)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    d_terms = discriminator_terms(out.image, label=label, real=real, disc=disc)
    assert set(d_terms) == {"gan"} and torch.isfinite(d_terms["gan"])


def test_warp_loss_ignores_ref_pairs():
    from cocosnet.losses import warp_loss
    real = torch.zeros(2, 3, 8, 8)
    warps = [torch.zeros(2, 3, 8, 8)]
    warps[0][1] = 1.0  # only the ref sample is wrong
    assert warp_loss(warps, real, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    assert warp_loss(warps, real, torch.tensor([0.0, 1.0])).item() == pytest.approx(1.0, rel=1e-4)


def test_chunked_contextual_loss_equals_the_naive_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 8, 9, 7, generator=g), torch.randn(2, 8, 6, 5, generator=g)
    expected = contextual_loss_naive(x, y)
    for chunk in (1, 5, 64, 1000):
        torch.testing.assert_close(contextual_loss(x, y, chunk=chunk), expected)
    assert contextual_loss(y, y).item() < expected.item()


@pytest.mark.parametrize("layout", ["official", "torchvision"])
def test_vgg_weights_load_in_both_layouts(tmp_path, layout):
    source = VGG19()
    for conv in source.convs.values():
        torch.nn.init.normal_(conv.weight)
    if layout == "official":
        state = {f"{n}.{p}": source.convs[n].state_dict()[p] for n, _, _ in CONVS for p in ("weight", "bias")}
        state["conv5_4.weight"] = torch.zeros(512, 512, 3, 3)  # extra layers are ignored
    else:
        state = {f"features.{TORCHVISION_INDEX[n]}.{p}": source.convs[n].state_dict()[p]
                 for n, _, _ in CONVS for p in ("weight", "bias")}
        state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "vgg.pth")
    vgg = load_vgg19(str(tmp_path / "vgg.pth"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(vgg(x)["relu5_2"], source(x)["relu5_2"])
    assert not any(p.requires_grad for p in vgg.parameters())


def test_missing_or_wrong_vgg_weights_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_vgg19("weights/nope.pth", base=tmp_path)
    assert "nope.pth" in str(err.value) and "vgg.weights: random" in str(err.value)
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth.*layout"):
        load_vgg19(str(tmp_path / "bad.pth"))
    (tmp_path / "cut.pth").write_bytes((tmp_path / "bad.pth").read_bytes()[:40])
    with pytest.raises(WeightsError, match=r"cut\.pth: not a readable VGG19 weights file"):
        load_vgg19(str(tmp_path / "cut.pth"))


def test_vgg_preprocessing_is_caffe_style():
    vgg = VGG19()
    x = torch.zeros(1, 3, 2, 2)
    x[:, 0] = 1.0  # red in [-1, 1]
    y = vgg.preprocess(x)
    # BGR order: the red input lands in channel 2, minus the mean, times 255.
    assert y[0, 2, 0, 0].item() == pytest.approx((1.0 - 0.48501961) * 255)
    assert y[0, 0, 0, 0].item() == pytest.approx((0.5 - 0.40760392) * 255)


def test_dense_level_matches_identical_features_to_themselves():
    g = torch.Generator().manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(1, 16, 6, 5, generator=g), dim=1)
    colors = torch.rand(1, 3, 6, 5, generator=g)
    warp, cycle, coords, scores = dense_match(feats, feats, colors, temperature=0.01, k=3, cycle=True)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="ij")
    torch.testing.assert_close(coords[0, :, :, 0], torch.stack([xs, ys], -1))
    torch.testing.assert_close(warp, colors, atol=0.05, rtol=0)
    assert cycle.shape == colors.shape and (scores[..., 0] >= scores[..., 1]).all()


def test_a_large_dense_level_without_autograd_is_matched_in_chunks_with_the_same_result(monkeypatch):
    from cocosnet.models import correspondence

    g = torch.Generator().manual_seed(2)
    query = torch.nn.functional.normalize(torch.randn(2, 8, 7, 5, generator=g), dim=1)
    key = torch.nn.functional.normalize(torch.randn(2, 8, 6, 4, generator=g), dim=1)
    colors = torch.rand(2, 3, 6, 4, generator=g)
    chunks = []
    real = correspondence._dense_match_chunked

    def spy(*args, **kwargs):
        chunks.append(kwargs["rows"])
        return real(*args, **kwargs)

    monkeypatch.setattr(correspondence, "_dense_match_chunked", spy)
    with torch.no_grad():
        whole = dense_match(query, key, colors, temperature=0.01, k=4, cycle=False)
        monkeypatch.setattr(memory, "DENSE_CHUNK_ELEMENTS", 2 * 24 * 6)  # 6 query pixels a chunk
        chunked = dense_match(query, key, colors, temperature=0.01, k=4, cycle=False)
        assert dense_match(query, key, colors, temperature=0.01, k=4, cycle=True)[1] is not None
    dense_match(query, key, colors, temperature=0.01, k=4, cycle=False)  # with autograd: whole
    assert chunks == [6]  # only without autograd and without the cycle
    assert chunked[1] is None
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[2], whole[2], rtol=0, atol=0)
    torch.testing.assert_close(chunked[3], whole[3], rtol=0, atol=1e-6)


def test_candidates_are_handed_to_the_finer_level():
    coords = torch.tensor([[[[[1.0, 2.0], [0.0, 0.0]]]]])  # (1, 1, 1, 2, 2): one coarse pixel, k = 2
    fine = upsample_candidates(coords, (2, 2), (8, 8), (4, 4))
    assert fine.shape == (1, 2, 2, 2, 2)
    torch.testing.assert_close(fine[0, 1, 1, 0], torch.tensor([2.5, 4.5]))  # (c + 0.5) * 2 - 0.5
    torch.testing.assert_close(fine[0, 0, 0, 1], torch.tensor([0.5, 0.5]))


def test_blocks_normalise_and_condition():
    x = torch.randn(2, 6, 5, 5) * 3 + 2
    y = PositionalNorm()(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 5, 5), atol=1e-5, rtol=0)
    block = SPADEResBlock(6, 4, 20, spade_hidden=8)
    seg_a, seg_b = torch.zeros(2, 20, 3, 3), torch.ones(2, 20, 3, 3)
    assert block(x, seg_a).shape == (2, 4, 5, 5)
    assert not torch.allclose(block(x, seg_a), block(x, seg_b))


def _every_and_no_checkpoint(monkeypatch, build, inputs) -> dict:
    """Forward + backward of `build()` (seeded, train mode) on `inputs()` (the first requires grad)
    with every checkpoint taken (threshold 0) and with none (2**62). Per threshold: the checkpoint
    calls, the outputs, the first input's gradient, the parameters' gradients and the buffers."""
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = {}
    for threshold in (0, 2**62):
        monkeypatch.setattr(memory, "CHECKPOINT_MIN_ELEMENTS", threshold)
        calls.clear()
        torch.manual_seed(0)
        module = build()
        args = inputs()
        out = module(*args)
        outs = [t for part in out for t in (part if isinstance(part, list) else [part])] \
            if isinstance(out, tuple) else [out]
        sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in outs).backward()
        results[threshold] = (len(calls), [t.detach() for t in outs], args[0].grad,
                              [p.grad for p in module.parameters()], [b.clone() for b in module.buffers()])
    return results


def _assert_the_same(results, *, input_atol: float, param_atol: float, buffer_atol: float = 0.0) -> None:
    """Outputs equal exactly; gradients and buffers (the spectral norms' u, v) within the tolerances."""
    every, none = results[0], results[2**62]
    for a, b in zip(every[1], none[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(every[2], none[2], rtol=0, atol=input_atol)
    for a, b in zip(every[3], none[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=param_atol)
    for a, b in zip(every[4], none[4]):
        torch.testing.assert_close(a, b, rtol=0, atol=buffer_atol)


def test_large_spade_block_branches_are_checkpointed_with_the_same_output_gradients_and_power_iteration(monkeypatch):
    results = _every_and_no_checkpoint(
        monkeypatch, lambda: SPADEResBlock(6, 4, 20, spade_hidden=8),
        lambda: (torch.randn(2, 6, 9, 9, requires_grad=True), torch.rand(2, 20, 5, 5)))
    assert results[0][0] == 3 and results[2**62][0] == 0  # each branch once (s, 0, 1); their SPADEs not again
    # buffers exact: the recomputation did not run the power iteration again
    _assert_the_same(results, input_atol=1e-7, param_atol=1e-6, buffer_atol=0.0)


def test_a_spade_block_equals_calling_its_modules():
    """The block passes each spectral-norm weight into its convolution; calling the modules (which
    runs their hooks) must give the same output and the same power iteration."""
    torch.manual_seed(0)
    block = SPADEResBlock(6, 4, 20, spade_hidden=8)
    reference = copy.deepcopy(block)
    x, seg = torch.randn(2, 6, 9, 9), torch.rand(2, 20, 5, 5)
    out = block(x, seg)
    r = reference
    shortcut = r.conv_s(r.norm_s(x, seg))
    dx = r.conv_1(F.leaky_relu(r.norm_1(r.conv_0(F.leaky_relu(r.norm_0(x, seg), 0.2)), seg), 0.2))
    torch.testing.assert_close(out, shortcut + dx, rtol=0, atol=0)
    for (name, a), b in zip(block.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_large_spade_alone_is_checkpointed_with_the_same_output_and_gradients(monkeypatch):
    from cocosnet.models.blocks import SPADE

    results = _every_and_no_checkpoint(
        monkeypatch, lambda: SPADE(6, 20, hidden=8),
        lambda: (torch.randn(2, 6, 9, 9, requires_grad=True), torch.rand(2, 20, 5, 5)))
    assert results[0][0] == 1 and results[2**62][0] == 0
    _assert_the_same(results, input_atol=1e-7, param_atol=1e-6)


@pytest.mark.parametrize("size", [(10, 9), (12, 7)])
def test_large_spade_calls_without_autograd_run_in_row_tiles_with_the_same_output(monkeypatch, size):
    from cocosnet.models import blocks

    torch.manual_seed(0)
    # eval: no power iteration between the calls; float64, so the tiles' other rounding (the gamma conv
    # adds its 1 in the bias) is not amplified by the tiny block's normalisations into 1e-5
    block = SPADEResBlock(6, 4, 20, spade_hidden=8).eval().double()
    x, seg = torch.randn(2, 6, *size, dtype=torch.float64), torch.rand(2, 20, 5, 5, dtype=torch.float64)
    tile_rows = []
    real = blocks.SPADE._modulate_tiled

    def spy(self, x, seg, rows: int):
        tile_rows.append(rows)
        return real(self, x, seg, rows=rows)

    monkeypatch.setattr(blocks.SPADE, "_modulate_tiled", spy)

    with torch.no_grad():
        whole = block(x, seg)
        assert tile_rows == []
        monkeypatch.setattr(memory, "CHECKPOINT_MIN_ELEMENTS", 0)
        monkeypatch.setattr(memory, "SPADE_TILE_ELEMENTS", 3 * 2 * 8 * size[1])  # 3 rows of (B, hidden, W)
        tiled = block(x, seg)
    assert tile_rows == [3, 3, 3]  # norm_s, norm_0, norm_1; the last tile of 10 rows has 1 row
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)


def test_large_residual_blocks_are_checkpointed_with_the_same_output_and_gradients(monkeypatch):
    from cocosnet.models.blocks import ResidualBlock

    results = _every_and_no_checkpoint(monkeypatch, lambda: ResidualBlock(5),
                                       lambda: (torch.randn(2, 5, 7, 7, requires_grad=True),))
    assert results[0][0] == 1 and results[2**62][0] == 0
    _assert_the_same(results, input_atol=1e-6, param_atol=1e-5)


def _encoder_layer():
    from cocosnet.models.align import EncoderLayer

    torch.manual_seed(0)
    return EncoderLayer(4, 6, 2, first=False)


def test_an_encoder_layer_equals_its_modules_in_sequence_and_checkpoints_exactly(monkeypatch):
    x = torch.randn(2, 4, 11, 11)
    layer = _encoder_layer()
    reference = copy.deepcopy(layer)
    torch.testing.assert_close(layer(x), torch.nn.Sequential.forward(reference, x), rtol=0, atol=0)
    for (name, a), b in zip(layer.named_buffers(), reference.buffers()):  # one power iteration, as the modules
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    results = _every_and_no_checkpoint(monkeypatch, _encoder_layer, lambda: (x.clone().requires_grad_(True),))
    assert results[0][0] == 2 and results[2**62][0] == 0  # the conv part and the residual block
    _assert_the_same(results, input_atol=1e-6, param_atol=1e-6, buffer_atol=1e-6)


def test_an_alignment_unet_checkpointed_everywhere_equals_one_checkpointed_nowhere(monkeypatch):
    """Every checkpoint of the U-Net at once (encoder layers, residual blocks, SPADE block branches,
    the level outputs): the same features, gradients and power iterations as none."""
    from cocosnet.models.align import AlignUNet

    results = _every_and_no_checkpoint(
        monkeypatch, lambda: AlignUNet(5, (8, 6, 4), match_channels=3, spade_hidden=4),
        lambda: (torch.rand(2, 5, 16, 16, requires_grad=True),))
    # 4 encoder layers, 3 residual blocks, 2 + 3 + 3 block branches (the head has no shortcut), 3 level outputs
    assert results[0][0] == 4 + 3 + 8 + 3 and results[2**62][0] == 0
    _assert_the_same(results, input_atol=1e-5, param_atol=1e-5, buffer_atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_positional_norm_of_a_channels_last_map_is_the_official_pono(dtype, atol):
    """The channels-last form (a rescaled layer_norm) equals the official per-pixel formula: unbiased
    variance, eps 1e-8 added to it; a constant pixel (variance 0) stays finite."""
    from cocosnet.models.blocks import positional_norm

    x = torch.randn(2, 5, 7, 6, dtype=dtype) * 3 + 1
    x[1, :, 2, 3] = 0.25
    centred = x - x.mean(dim=1, keepdim=True)
    official = centred / (x.var(dim=1, keepdim=True, unbiased=True) + 1e-8).sqrt()
    out = positional_norm(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, official, rtol=0, atol=atol)
    torch.testing.assert_close(positional_norm(x), official, rtol=0, atol=atol)


def test_instance_norm_keeps_a_channels_last_input_channels_last_with_the_same_values():
    from cocosnet.models.blocks import InstanceNorm

    x = torch.randn(2, 5, 7, 6) * 3 + 1
    norm, reference = InstanceNorm(5), torch.nn.InstanceNorm2d(5)
    assert torch.equal(norm(x), reference(x))  # the plain layout is the built-in norm
    out = norm(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, reference(x), rtol=0, atol=1e-5)


def test_an_alignment_unet_runs_channels_last_without_autograd_with_the_same_features(monkeypatch):
    """Forward-only, the U-Net runs channels-last through every layer, SPADE row tiles included; its
    features equal the plain layout's (with autograd); in float64, so float32 rounding, which the
    normalisations of a tiny random net amplify to 1e-4, does not hide a wrong value."""
    from cocosnet.models import blocks
    from cocosnet.models.align import AlignUNet

    torch.manual_seed(0)
    unet = AlignUNet(5, (8, 6, 4), match_channels=3, spade_hidden=4).eval().double()
    x = torch.rand(2, 5, 16, 16, dtype=torch.float64)
    plain = unet(x)  # with autograd: NCHW, untiled
    monkeypatch.setattr(memory, "CHECKPOINT_MIN_ELEMENTS", 0)
    monkeypatch.setattr(memory, "SPADE_TILE_ELEMENTS", 2 * 4 * 16 * 3)  # 3-row tiles at full resolution
    convs = []
    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            # channels innermost (a SPADE's row tiles of a batch of 2 are views with gaps between the images)
            module.register_forward_pre_hook(lambda m, args: convs.append(args[0].stride(1) == 1))
    with torch.no_grad():
        fast = unet(x)
    assert convs and all(convs)
    for a, b in zip(fast[0] + fast[1], plain[0] + plain[1]):
        assert blocks.is_channels_last(a) or min(a.shape[-2:]) == 1
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
