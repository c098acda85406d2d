"""The refiner (models/refiner.py) and the refine stage (train/refine.py)."""

import dataclasses
import shutil

import pandas as pd
import pytest
import torch

from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.refiner import Refiner, candidate_colors, refiner_inputs
from cocosnet.train.checkpoint import list_checkpoints, load_checkpoint
from cocosnet.train.inputs import STAGES
from cocosnet.train.loop import RunPaths, run_training
from cocosnet.train.refine import crop_windows, finest_band, random_windows, refine_terms, texture_term
from tests.helpers import CPU, prepare_data, state, tiny_training_config


@pytest.fixture(scope="module")
def data(tiny_raw, tmp_path_factory):
    processed = tmp_path_factory.mktemp("processed")
    prepare_data(tiny_raw, processed)
    return tiny_raw, processed


def train(cfg, stage, processed, out, init=None):
    paths = RunPaths(ckpt_dir=out / "ckpt", out_model=out / "model.pt", reports=out / "reports", init=init)
    return run_training(cfg, STAGES[stage], pd.read_parquet(processed / "pairs.parquet"), paths, info=CPU,
                        show_progress=False)


def _candidates(b=2, k=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(b, k, 3, h, w, generator=g) * 2 - 1
    scores = torch.rand(b, h, w, k, generator=g).sort(dim=-1, descending=True).values
    label = torch.rand(b, 20, h, w, generator=g)
    return colors, scores, label


def test_an_untrained_refiner_returns_its_input_and_its_gradient_reaches_the_last_layer():
    colors, scores, label = _candidates()
    image = torch.rand(2, 3, 6, 5) * 2 - 1
    refiner = Refiner(4, 20, width=8, temperature=0.01)
    out = refiner(colors, scores, label, image)
    assert torch.equal(out, image)
    (out - image.flip(0)).abs().mean().backward()
    assert refiner.out.weight.grad.abs().sum() > 0 and refiner.out.bias.grad.abs().sum() > 0


def test_the_refiner_can_pick_any_candidate_and_correct_the_colour():
    """Starting from the matcher's softmax warp, a large logit offset for candidate j returns that candidate's
    colours, and the RGB channels add a colour shift."""
    colors, scores, label = _candidates()
    warp = (colors * (scores.permute(0, 3, 1, 2) / 0.01).softmax(1).unsqueeze(2)).sum(1)
    refiner = Refiner(4, 20, width=8, temperature=0.01)
    with torch.no_grad():
        refiner.out.bias[2] = 1e4  # candidate 2 wins everywhere
    torch.testing.assert_close(refiner(colors, scores, label, warp), colors[:, 2], atol=1e-5, rtol=0)
    with torch.no_grad():
        refiner.out.bias[2] = 0.0
        refiner.out.bias[4:] = torch.tensor([0.1, -0.2, 0.3])
    torch.testing.assert_close(refiner(colors, scores, label, warp) - warp,
                               torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1).expand_as(warp), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="built for 4 candidates, got 3"):
        refiner(colors[:, :3], scores[..., :3], label, warp)


def test_hard_selection_keeps_one_candidate_per_pixel_and_passes_the_softmax_gradient():
    colors, scores, label = _candidates()
    warp = (colors * (scores.permute(0, 3, 1, 2) / 0.01).softmax(1).unsqueeze(2)).sum(1)
    soft = Refiner(4, 20, width=8, temperature=0.01)
    hard = Refiner(4, 20, width=8, temperature=0.01, select="hard")
    hard.load_state_dict(soft.state_dict())
    assert torch.equal(soft(colors, scores, label, warp), warp)  # soft starts at its input
    out = hard(colors, scores, label, warp)
    first = colors.gather(1, (scores.permute(0, 3, 1, 2) / 0.01).argmax(1)[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
    torch.testing.assert_close(out, first, atol=1e-5, rtol=0)  # untrained: the best-scored candidate itself
    with torch.no_grad():
        hard.out.bias[2] = 1e4
    torch.testing.assert_close(hard(colors, scores, label, warp), colors[:, 2], atol=1e-5, rtol=0)
    with torch.no_grad():
        hard.out.bias[2] = 0.0
    (hard(colors, scores, label, warp) - colors[:, 1]).abs().mean().backward()
    assert hard.out.weight.grad[:4].abs().sum() > 0  # the logit offsets learn through the one-hot choice
    with pytest.raises(ValueError, match="select must be 'soft' or 'hard'"):
        Refiner(4, 20, width=8, temperature=0.01, select="median")


def test_dilations_set_how_far_the_refiner_sees_and_the_default_keeps_the_layer_names():
    colors, scores, label = _candidates(b=1, h=41, w=41)
    image = torch.zeros(1, 3, 41, 41)
    far = colors.clone()
    far[..., 20, 20 + 14] += 1.0  # 14 px right of the centre pixel
    changed = {}
    for dilations in ((1, 2, 1), (1, 2, 4, 8)):
        torch.manual_seed(0)
        refiner = Refiner(4, 20, width=8, temperature=0.01, dilations=dilations)
        torch.nn.init.normal_(refiner.out.weight)  # untrained, the last layer is zero and nothing changes
        with torch.no_grad():
            centre = lambda c: refiner(c, scores, label, image)[..., 20, 20]  # noqa: E731, B023
            changed[dilations] = not torch.equal(centre(colors), centre(far))
    assert changed == {(1, 2, 1): False, (1, 2, 4, 8): True}  # 13 px against 35 px of view
    names = [k for k in Refiner(4, 20, width=8, temperature=0.01).state_dict() if k.endswith("weight")]
    assert names == ["body.0.weight", "body.2.weight", "body.4.weight", "body.6.weight", "out.weight"]


def test_candidate_colours_sample_each_position_and_are_resized_to_the_output():
    source = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    coords = torch.zeros(2, 4, 5, 2, 2)
    coords[..., 0, :] = torch.tensor([1.0, 2.0])  # (x, y)
    coords[..., 1, :] = torch.tensor([4.0, 0.0])
    colors = candidate_colors(source, coords)
    assert colors.shape == (2, 2, 3, 4, 5)
    assert torch.equal(colors[:, 0, :, 0, 0], source[:, :, 2, 1]) and torch.equal(colors[:, 1, :, 3, 3], source[:, :, 0, 4])
    scores = torch.rand(2, 4, 5, 2)
    _, _, offsets = refiner_inputs(source, coords, scores, (4, 5))
    assert offsets.shape == (2, 2, 2, 4, 5)
    assert offsets[0, 0, :, 3, 2].tolist() == [1.0 - 2, 2.0 - 3]  # (x, y) of the candidate minus the pixel's
    big_colors, big_scores, big_offsets = refiner_inputs(source, coords, scores, (8, 10))
    assert big_colors.shape == (2, 2, 3, 8, 10) and big_scores.shape == (2, 8, 10, 2)
    assert torch.equal(big_scores[:, ::2, ::2], scores)
    still = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")[::-1], dim=-1)
    _, _, none = refiner_inputs(source, still[None, :, :, None].expand(2, 4, 5, 2, 2), scores, (8, 10))
    assert none.abs().max() < 1e-5  # a candidate at its own pixel has no offset at any output size
    assert big_offsets.abs().max() > 2 * offsets.abs().max() - 1e-4  # offsets in output pixels: doubled


def test_a_refiner_built_for_offsets_reads_them():
    colors, scores, label = _candidates()
    image = torch.zeros(2, 3, 6, 5)
    refiner = Refiner(4, 20, width=8, temperature=0.01, offsets=True)
    torch.nn.init.normal_(refiner.out.weight)
    offsets = torch.zeros(2, 4, 2, 6, 5)
    with torch.no_grad():
        assert not torch.equal(refiner(colors, scores, label, image, offsets),
                               refiner(colors, scores, label, image, offsets + 4.0))
    with pytest.raises(ValueError, match="offsets, and got none"):
        refiner(colors, scores, label, image)


def test_the_refine_terms_are_zero_only_at_the_target_and_the_edge_term_ignores_a_constant_shift():
    target = torch.rand(2, 3, 6, 5) * 2 - 1
    assert all(t.item() == 0 for t in refine_terms(target, target))
    l1, edges = refine_terms(target + 0.1, target)
    assert l1.item() == pytest.approx(0.1) and edges.item() == pytest.approx(0.0, abs=1e-6)
    blurred = target.mean(dim=(-2, -1), keepdim=True).expand_as(target)  # the flattest image
    assert refine_terms(blurred, target)[1] > 0.1


def test_the_texture_term_sees_blur_not_misalignment_and_its_gradient_reaches_the_output():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    shifted = target.roll(3, dims=-1)  # the same texture, misaligned by 3 px
    term = lambda out: float(texture_term(out, target, torch.Generator().manual_seed(1)))  # noqa: E731
    assert term(blurred) > 3 * term(shifted) and term(blurred) > 3 * term(target)
    l1_blur, l1_shift = (blurred - target).abs().mean(), (shifted - target).abs().mean()
    assert l1_shift > l1_blur  # L1 prefers the blur the texture term penalises
    out = blurred.clone().requires_grad_()
    texture_term(out, target, torch.Generator().manual_seed(1)).backward()
    assert out.grad.abs().sum() > 0
    flat = torch.zeros(1, 3, 16, 16)
    assert torch.equal(finest_band(flat + 0.3), flat)  # a constant has no band


def test_model_refiner_width_zero_is_the_model_without_a_refiner(data):
    """An untrained refiner changes nothing: the model with one computes what the model without one does."""
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    torch.manual_seed(0)
    with_refiner = CoCosNet.from_config(cfg).eval()
    off = dataclasses.replace(cfg.model, refiner=dataclasses.replace(cfg.model.refiner, width=0))
    without = CoCosNet(off).eval()
    assert without.refiner is None and not any(k.startswith("refiner.") for k in without.state_dict())
    without.load_state_dict({k: v for k, v in with_refiner.state_dict().items() if not k.startswith("refiner.")})
    g = torch.Generator().manual_seed(1)
    label, exemplar = torch.rand(2, 20, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    a = with_refiner(label, exemplar, label.flip(0), generator=torch.Generator().manual_seed(2)).image
    b = without(label, exemplar, label.flip(0), generator=torch.Generator().manual_seed(2)).image
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def gan_model(data, tmp_path_factory):
    """A tiny pretrain + GAN run; its model file starts the refine runs below."""
    raw, processed = data
    cfg = tiny_training_config(raw, processed)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=1),
                              train=dataclasses.replace(cfg.train, steps=1))
    out = tmp_path_factory.mktemp("gan")
    train(cfg, "pretrain", processed, out / "pre")
    train(cfg, "train", processed, out / "gan", init=out / "pre" / "model.pt")
    return cfg, out / "gan" / "model.pt"


def test_the_gan_stage_builds_no_refiner_and_does_not_read_its_settings(gan_model):
    cfg, path = gan_model
    saved = load_checkpoint(path)
    assert not any(k.startswith("refiner.") for k in saved["model"])
    assert saved["config"]["model"]["refiner"]["width"] == 0 and cfg.model.refiner.width == 8
    assert not any(k.startswith(("model.refiner", "refine.")) for k in saved["inputs"]["params"])


def killed_copy(run, out):
    """A copy of a finished run as if killed before its last checkpoint: only the one before it is left."""
    shutil.copytree(run, out)
    for path in list_checkpoints(out / "ckpt")[1:]:
        path.unlink()
    (out / "model.pt").unlink()
    return out


def _refine(cfg, steps, **extra):
    return dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, steps=steps, **extra))


def test_the_refine_stage_trains_only_the_refiner_and_a_killed_run_resumes_exactly(data, gan_model, tmp_path):
    raw, processed = data
    cfg, init = gan_model
    gan = load_checkpoint(init)["model"]
    metrics, straight = train(_refine(cfg, 4), "refine", processed, tmp_path / "straight", init=init)
    assert set(metrics) == {"refine_l1", "refine_edges", "base_l1"}
    refined = state(straight)
    for key, value in gan.items():  # the matcher and the generator are the GAN stage's, unchanged
        assert torch.equal(refined[key], value), key
    assert refined["refiner.out.weight"].abs().sum() > 0  # trained: it started at zero
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "straight" / "ckpt")[-1])
    assert ckpt["stage"] == "refine" and set(ckpt["trainer"]) == {"opt"}
    assert "refine.lr" in ckpt["inputs"]["params"] and "model.refiner.width" in ckpt["inputs"]["params"]
    assert (tmp_path / "straight" / "reports" / "losses.tsv").read_text().startswith("step\trefine_l1\trefine_edges\tbase_l1")

    # a run killed after step 3: its step-4 checkpoint and its model never written
    out = killed_copy(tmp_path / "straight", tmp_path / "killed")
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(out / "ckpt")] == [3]
    _, resumed = train(_refine(cfg, 4), "refine", processed, out, init=init)
    for key, value in refined.items():  # the cache rebuilt after the resume holds the same candidates
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_the_refine_pool_is_fixed_and_its_settings_change_the_result(data, gan_model, tmp_path):
    raw, processed = data
    cfg, init = gan_model
    _, base = train(_refine(cfg, 3), "refine", processed, tmp_path / "base", init=init)
    for name, change in {"lr": {"lr": cfg.refine.lr * 10}, "pool": {"pool": 2}, "grad_clip": {"grad_clip": 1e-6},
                         "edge_weight": {"edge_weight": 0.0}, "texture_weight": {"texture_weight": 1.0},
                         "patch": {"patch": cfg.data.crop_size // 2}}.items():
        _, other = train(_refine(cfg, 3, **change), "refine", processed, tmp_path / name, init=init)
        assert not torch.equal(other.refiner.out.weight, base.refiner.out.weight), name
    wide = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, refiner=dataclasses.replace(cfg.model.refiner, dilations=(1, 2, 4))))
    _, other = train(_refine(wide, 3), "refine", processed, tmp_path / "dilations", init=init)
    assert other.refiner.out.weight.shape == base.refiner.out.weight.shape
    assert not torch.equal(other.refiner.out.weight, base.refiner.out.weight)


def test_patch_windows_lie_inside_the_image_and_crop_every_tensor_at_its_own_window():
    g = torch.Generator().manual_seed(0)
    windows = random_windows((9, 7), 4, 200, g)
    assert {t for t, _ in windows} == set(range(6)) and {left for _, left in windows} == set(range(4))
    x = torch.arange(3 * 2 * 9 * 7.0).view(3, 2, 9, 7)
    crops = crop_windows(x, [(0, 0), (5, 3), (2, 1)], 4)
    assert crops.shape == (3, 2, 4, 4)
    assert torch.equal(crops[1], x[1, :, 5:9, 3:7]) and torch.equal(crops[2], x[2, :, 2:6, 1:5])


def test_a_patched_refine_run_resumes_exactly(data, gan_model, tmp_path):
    """The windows are drawn from (seed, step): a run killed after step 2 ends where an uninterrupted one does."""
    raw, processed = data
    cfg, init = gan_model
    patched = _refine(cfg, 3, patch=cfg.data.crop_size // 2)
    _, straight = train(patched, "refine", processed, tmp_path / "straight", init=init)
    out = killed_copy(tmp_path / "straight", tmp_path / "killed")
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(out / "ckpt")] == [2]
    _, resumed = train(patched, "refine", processed, out, init=init)
    assert torch.equal(resumed.refiner.out.weight, straight.refiner.out.weight)


def test_a_hard_refiner_trains_soft_for_its_soft_steps(data, gan_model, tmp_path):
    """soft_steps covering the whole run train exactly what a soft refiner trains; without them the hard
    choice trains from the first step."""
    raw, processed = data
    cfg, init = gan_model
    hard = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, refiner=dataclasses.replace(cfg.model.refiner, select="hard")))
    _, soft = train(_refine(cfg, 3), "refine", processed, tmp_path / "soft", init=init)
    _, warmed = train(_refine(hard, 3, soft_steps=3), "refine", processed, tmp_path / "warmed", init=init)
    _, cold = train(_refine(hard, 3), "refine", processed, tmp_path / "cold", init=init)
    assert torch.equal(warmed.refiner.out.weight, soft.refiner.out.weight)
    assert not torch.equal(cold.refiner.out.weight, soft.refiner.out.weight)
    assert warmed.refiner.select == "hard"  # the model it writes chooses hard


def test_no_refinement_writes_the_gan_model_with_the_stage_outputs(data, gan_model, tmp_path):
    raw, processed = data
    cfg, init = gan_model
    for name, run_cfg in {"steps0": _refine(cfg, 0),
                          "width0": dataclasses.replace(cfg, model=dataclasses.replace(
                              cfg.model, refiner=dataclasses.replace(cfg.model.refiner, width=0)))}.items():
        _, model = train(run_cfg, "refine", processed, tmp_path / name, init=init)
        written = load_checkpoint(tmp_path / name / "model.pt")
        assert written["stage"] == "refine" and written["step"] == 0
        gan = load_checkpoint(init)["model"]
        assert all(torch.equal(written["model"][k], v) for k, v in gan.items())
        assert not list_checkpoints(tmp_path / name / "ckpt")
        reports = tmp_path / name / "reports"
        assert (reports / "losses.tsv").read_text() == "step\n" and (reports / "losses.png").stat().st_size > 0
        assert [p.name for p in (reports / "samples").iterdir()] == ["step-000000.png"]
