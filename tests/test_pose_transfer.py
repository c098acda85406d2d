"""The pose-transfer protocol's metrics (`eval.protocol: pose_transfer`): LPIPS's network against a
transcription, SSIM against a transcription of skimage's, the crop back to the photo, the ImageNet
Inception's layout, the training-split statistics, and the evaluate stage end to end on the In-shop layout."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from cocosnet.config import config_from_dict
from cocosnet.data import steps
from cocosnet.data.deepfashion import load_image, preprocess_image
from cocosnet.data.pair_table import pair_table
from cocosnet.data.synthetic import generate
from cocosnet.evaluation_run import run_evaluation
from cocosnet.metrics import pose_transfer
from cocosnet.metrics.fid import FIDInceptionV3, FidUnavailable, ImageNetInceptionV3, load_inception
from cocosnet.metrics.lpips import CHANNELS, CONV_INDICES, LpipsUnavailable, load_lpips, lpips_distance
from cocosnet.metrics.pose_transfer import crop_to_photo, pose_transfer_ssim, training_statistics
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.tracking import PIPELINE_ENV
from cocosnet.train.checkpoint import save_model
from tests.helpers import TINY, random_pytorch_fid_state, tiny_params


def random_lpips_files(folder, seed=0):
    """Random weights in the two files' own key layouts: torchvision's AlexNet (with its classifier) and the
    lpips package's v0.1 heads."""
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    alex = {}
    for i, shape in shapes.items():
        alex[f"features.{i}.weight"] = torch.randn(shape, generator=g) * (2 / np.prod(shape[1:])) ** 0.5
        alex[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    alex["classifier.1.weight"] = torch.randn(10, 9216, generator=g)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS)}
    torch.save(alex, folder / "alexnet.pth")
    torch.save(heads, folder / "alex.pth")
    return folder / "alex.pth", folder / "alexnet.pth", alex, heads


def lpips_transcription(x0, x1, alex, heads):
    """LPIPS v0.1 written out step by step from the paper and the lpips package's description."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        x = F.relu(F.conv2d(x, alex["features.0.weight"], alex["features.0.bias"], stride=4, padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), alex["features.3.weight"], alex["features.3.bias"], padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), alex["features.6.weight"], alex["features.6.bias"], padding=1))
        out.append(x)
        x = F.relu(F.conv2d(x, alex["features.8.weight"], alex["features.8.bias"], padding=1))
        out.append(x)
        x = F.relu(F.conv2d(x, alex["features.10.weight"], alex["features.10.bias"], padding=1))
        out.append(x)
        return out

    total = 0
    for i, (a, b) in enumerate(zip(taps(x0), taps(x1))):
        na = a / (torch.sqrt((a ** 2).sum(1, keepdim=True)) + 1e-10)
        nb = b / (torch.sqrt((b ** 2).sum(1, keepdim=True)) + 1e-10)
        total = total + ((na - nb) ** 2 * heads[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_matches_a_transcription_with_random_weights_in_its_key_layout(tmp_path):
    heads_file, alex_file, alex, heads = random_lpips_files(tmp_path)
    model = load_lpips(heads_file, alex_file)
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.rand(3, 3, 96, 64, generator=g) * 2 - 1, torch.rand(3, 3, 96, 64, generator=g) * 2 - 1
    ours = lpips_distance(model, x0, x1)
    assert torch.allclose(ours, lpips_transcription(x0, x1, alex, heads), rtol=1e-5, atol=1e-6)
    assert (ours > 0).all() and torch.allclose(lpips_distance(model, x0, x0), torch.zeros(3), atol=1e-7)
    assert set(CONV_INDICES) == {0, 3, 6, 8, 10}


def test_lpips_without_its_files_says_which_and_where_to_get_them(tmp_path):
    heads_file, alex_file, alex, heads = random_lpips_files(tmp_path)
    with pytest.raises(LpipsUnavailable, match="eval.lpips_weights` is not set"):
        load_lpips("", alex_file)
    with pytest.raises(LpipsUnavailable, match=r"alexnet_weights.*does not exist.*alexnet-owt-7be5be79\.pth"):
        load_lpips(heads_file, tmp_path / "missing.pth")
    torch.save({k.replace("lin", "head"): v for k, v in heads.items()}, tmp_path / "wrong.pth")
    with pytest.raises(LpipsUnavailable, match=r"has no `lin0\.model\.1\.weight`"):
        load_lpips(tmp_path / "wrong.pth", alex_file)
    torch.save({**alex, "features.3.weight": torch.zeros(192, 64, 3, 3)}, tmp_path / "badshape.pth")
    with pytest.raises(LpipsUnavailable, match=r"features\.3\.weight` has shape \(192, 64, 3, 3\)"):
        load_lpips(heads_file, tmp_path / "badshape.pth")


def skimage_ssim_256(gt, pred, sigma=1.5):
    """skimage.metrics.structural_similarity(gt, pred, gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, channel_axis=2, data_range=pred.max() - pred.min()), transcribed: Gaussian
    filter (truncate 3.5, reflect), the border of half the window (int(3.5 sigma + 0.5)) cropped, mean over
    channels."""
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    pad = int(3.5 * sigma + 0.5)
    r = pred.max() - pred.min()
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    out = []
    for c in range(3):
        x, y = pred[..., c], gt[..., c]

        def f(a):
            return ndimage.gaussian_filter(a, sigma=sigma, truncate=3.5, mode="reflect")

        ux, uy = f(x), f(y)
        vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        out.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(out))


def test_pose_transfer_ssim_matches_a_transcription_of_skimages():
    rng = np.random.default_rng(0)
    gt = rng.integers(90, 150, (64, 44, 3)).astype(np.uint8)  # low contrast, where the constants weigh most
    pred = np.clip(gt.astype(int) + rng.integers(-20, 20, gt.shape), 100, 140).astype(np.uint8)  # range 40, not 255

    def signed(a):
        return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1

    ours = float(pose_transfer_ssim(signed(pred), signed(gt))[0])
    assert ours == pytest.approx(skimage_ssim_256(gt, pred), abs=2e-5)
    pidm = float(pose_transfer_ssim(signed(pred), signed(gt), sigma=1.2)[0])  # PIDM's variant: a 9 px window
    assert pidm == pytest.approx(skimage_ssim_256(gt, pred, sigma=1.2), abs=2e-5) and abs(pidm - ours) > 1e-3
    from cocosnet.metrics.paired import ssim
    assert abs(ours - float(ssim(signed(pred), signed(gt))[0])) > 0.01  # the data range matters (0.02 here)


def test_the_crop_gives_back_the_photo(tmp_path):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (256, 176, 3), dtype=np.uint8)
    assert np.array_equal(crop_to_photo(preprocess_image(photo, 256), (176, 256)), photo)
    small = crop_to_photo(preprocess_image(photo, 64), (176, 256))
    assert small.shape == (256, 176, 3)
    smooth = np.asarray(Image.fromarray(photo).resize((44, 64), Image.Resampling.BICUBIC)
                        .resize((176, 256), Image.Resampling.BICUBIC))
    assert np.abs(small.astype(int) - smooth).mean() < 12  # the same content, through a 64 px square
    with pytest.raises(ValueError, match="square"):
        crop_to_photo(photo, (176, 256))


def torchvision_inception_state(seed=0):
    """The pytorch-fid random state in torchvision's layout: plus AuxLogits and a 1000-class fc."""
    state = random_pytorch_fid_state(seed)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["AuxLogits.conv0.conv.weight"] = torch.zeros(128, 768, 1, 1)
    return state


def test_the_imagenet_inception_loads_torchvisions_layout_and_pools_as_torchvision(tmp_path):
    path = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision_inception_state(), path)
    imagenet = load_inception(path, imagenet=True)
    assert isinstance(imagenet, FIDInceptionV3) and not imagenet.Mixed_7c.max_pool and not imagenet.Mixed_5b.tf
    with pytest.raises(FidUnavailable, match="imagenet_inception_weights` is not set"):
        load_inception("", imagenet=True)
    tf = FIDInceptionV3()
    tf.load_state_dict(imagenet.state_dict())
    x = torch.rand(2, 3, 64, 44)
    with torch.no_grad():
        a, b = imagenet(x), tf.eval()(x)
    assert a.shape == b.shape == (2, 2048) and not torch.allclose(a, b)  # same weights, another network
    cfld = load_inception(path, imagenet=True, input_transform="cfld")
    with torch.no_grad():
        assert not torch.allclose(cfld(x), a)  # CFLD feeds the same network other values
        fed = {}
        cfld.Conv2d_1a_3x3.register_forward_hook(lambda m, i, o: fed.update(x=i[0]))  # returns None: output kept
        cfld(torch.full((1, 3, 8, 8), 0.5))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(fed["x"][0, :, 0, 0], 0.5 * std / 0.5 + (mean - 0.5) / 0.5)
    block = ImageNetInceptionV3().Mixed_5b.eval()
    y = torch.rand(1, 192, 9, 9)
    with torch.no_grad():
        expected = block.branch_pool(F.avg_pool2d(y, 3, stride=1, padding=1))  # torchvision: padding counted
        assert torch.allclose(block(y)[:, -32:], expected)


def test_training_statistics_are_cached_and_recomputed_when_the_images_change(tmp_path, monkeypatch):
    calls = []

    def fake_stats(paths, model, device="cpu"):
        calls.append(len(paths))
        return np.full(3, float(len(calls))), np.eye(3)

    monkeypatch.setattr(pose_transfer, "load_inception", lambda weights, imagenet, input_transform: None)
    monkeypatch.setattr(pose_transfer, "file_statistics", fake_stats)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(images[-1])
    cache = tmp_path / "stats.npz"
    mu, _ = training_statistics(images, str(weights), cache)
    again, _ = training_statistics(images, str(weights), cache)
    assert calls == [3] and np.array_equal(mu, again)
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(images[0])
    import os
    os.utime(images[0], ns=(1, 1))
    changed, _ = training_statistics(images, str(weights), cache)
    assert calls == [3, 3] and not np.array_equal(changed, mu)
    training_statistics(images, str(weights), cache, input_transform="cfld")
    assert calls == [3, 3, 3]  # another input transform, other statistics


@pytest.fixture(scope="module")
def inshop_setup(tmp_path_factory):
    raw_root = tmp_path_factory.mktemp("ptraw") / "synthetic"
    generate(dataclasses.replace(TINY, image_width=88, image_height=128), raw_root, workers=1, show_progress=False,
             layout="inshop")
    processed = tmp_path_factory.mktemp("ptprocessed")
    raw = tiny_params(raw_root, processed)
    raw["data"]["source"] = "inshop"
    raw["eval"].update(max_pairs=4, batch_size=2, swd_size=16)
    cfg = config_from_dict(raw)
    steps.prepare(cfg)
    steps.render_keypoints(cfg)
    pair_table(cfg, processed / "reports")
    torch.manual_seed(0)
    model_path = tmp_path_factory.mktemp("ptmodel") / "refine.pt"
    save_model(model_path, CoCosNet.from_config(cfg), config=dataclasses.asdict(cfg), stage="refine", step=4, inputs={})
    return raw, raw_root, processed, model_path


def test_evaluate_under_the_pose_transfer_protocol(inshop_setup, tmp_path, monkeypatch):
    raw, raw_root, processed, model_path = inshop_setup
    heads, alex, _, _ = random_lpips_files(tmp_path)
    raw = json.loads(json.dumps(raw))
    raw["eval"].update(protocol="pose_transfer", lpips_weights=str(heads), alexnet_weights=str(alex))
    cfg = config_from_dict(raw)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(PIPELINE_ENV, "pose-transfer-test")
    reports = tmp_path / "reports"
    reports.mkdir()
    run_evaluation(cfg, model_path, reports, reports / "eval" / "outputs")
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "pose_transfer" and metrics["protocol"]["fid_reference"] == "training split"
    for name in ("l1", "psnr", "ssim", "lpips"):
        assert set(metrics["paired"][name]) == {"model", "finest_warp", "copy_exemplar"}, name
    assert metrics["paired"]["lpips"]["model"] > 0
    assert "eval.imagenet_inception_weights" in metrics["fid"]["unavailable"]
    assert "correspondence" in metrics  # the synthetic In-shop tree carries its ground truth
    outputs = reports / "eval" / "outputs" / "self"
    table = pd.read_csv(outputs / "pairs.csv")
    for role in ("fake", "real", "exemplar", "warp"):
        files = sorted((outputs / role).iterdir())
        assert [f.suffix for f in files] == [".png"] * len(table)
        assert np.asarray(Image.open(files[0])).shape == (128, 88, 3)  # the photo's own size
    assert np.array_equal(np.asarray(Image.open(outputs / "real" / table.iloc[0]["name"])),
                          load_image(raw_root / table.iloc[0]["target"]))  # the dataset's own target photo


def test_the_pose_transfer_fid_uses_the_training_split(inshop_setup, tmp_path, monkeypatch):
    raw, raw_root, processed, model_path = inshop_setup
    weights = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision_inception_state(), weights)
    seen = {}

    def fake_fid(train, candidates, *, weights, cache, input_transform, device):
        seen.update(train=train, candidates=candidates, weights=weights, input_transform=input_transform)
        return {who: 1.0 for who in candidates}

    from cocosnet import evaluate as evaluation
    monkeypatch.setattr(evaluation, "pose_transfer_fid", fake_fid)
    raw = json.loads(json.dumps(raw))
    raw["eval"].update(protocol="pose_transfer", imagenet_inception_weights=str(weights), pose_transfer_fid_input="cfld")
    cfg = config_from_dict(raw)
    pairs = pd.read_parquet(processed / "pairs.parquet")
    from cocosnet.train.checkpoint import load_model
    model, _ = load_model(model_path, cfg)
    metrics, _ = evaluation.evaluate(cfg, model, None, pairs, device=torch.device("cpu"), outputs=tmp_path / "out")
    train_list = (raw_root / "train.lst").read_text().split()
    assert [p.name for p in seen["train"]] == train_list
    assert len(seen["candidates"]["model"]) == metrics["pairs"]  # the self pairs' outputs, not the ref pairs'
    assert metrics["fid"] == {"model": 1.0, "finest_warp": 1.0, "copy_exemplar": 1.0}
    assert seen["input_transform"] == "cfld" and "cfld input" in metrics["protocol"]["fid_network"]
