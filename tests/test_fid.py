import numpy as np
import pytest
import torch
from PIL import Image

from cocosnet.metrics.fid import FEATURE_DIM, FidUnavailable, fid, frechet_distance, load_inception, statistics
from cocosnet.metrics.images import load_folder_pair
from tests.helpers import random_pytorch_fid_state


def _closed_form_diag(mu1, d1, mu2, d2):
    return float(((mu1 - mu2) ** 2).sum() + (d1 + d2 - 2 * np.sqrt(d1 * d2)).sum())


def test_frechet_distance_matches_the_closed_form_on_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    d1, d2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = _closed_form_diag(mu1, d1, mu2, d2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a shared rotation keeps the covariances commuting
    rotated = frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, np.diag(d1), mu1, np.diag(d1)) == pytest.approx(0, abs=1e-9)
    # Univariate: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == \
        pytest.approx(4 + 1)


def test_frechet_distance_from_samples_and_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (4000, 3)), rng.normal(1, 2, (4000, 3))
    value = frechet_distance(*statistics(a), *statistics(b))
    assert value == pytest.approx(3 * 1 + 3 * (1 + 4 - 2 * 2), rel=0.05)
    few = rng.normal(size=(5, 20))  # 5 samples in 20 dims: rank-deficient covariance
    other = rng.normal(size=(5, 20)) + 0.5
    value = frechet_distance(*statistics(few), *statistics(other))
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_the_state_dict_has_the_pytorch_fid_key_layout():
    state = random_pytorch_fid_state()
    # torchvision Inception3 without aux logits: 94 conv+BN units x 5 tensors, plus the 1008-way fc.
    assert len(state) == 94 * 5 + 2
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7a.branch3x3_2.conv.weight"].shape == (320, 192, 3, 3)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["Mixed_7c.branch1x1.bn.running_var"].shape == (320,)


def test_loading_a_saved_state_dict_and_the_output_shape(tmp_path):
    state = random_pytorch_fid_state()
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    model = load_inception(path)
    assert torch.equal(model.Mixed_6b.branch7x7_2.conv.weight, state["Mixed_6b.branch7x7_2.conv.weight"])
    assert torch.equal(model.Conv2d_1a_3x3.bn.running_mean, state["Conv2d_1a_3x3.bn.running_mean"])
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, FEATURE_DIM) and torch.isfinite(out).all()
    rng = np.random.default_rng(0)
    images, other = rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    different = fid(images, other, model, batch_size=3)
    assert different > 1.0
    # 4 samples in 2048 dims: singular covariances, so sqrtm leaves a little numerical noise.
    assert abs(fid(images, images, model, batch_size=3)) < 1e-4 * different


def test_missing_or_wrong_weights_are_unavailable_with_a_reason(tmp_path):
    with pytest.raises(FidUnavailable, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception(tmp_path / "absent.pth")
    with pytest.raises(FidUnavailable, match="not set"):
        load_inception("")
    state = random_pytorch_fid_state()
    del state["Mixed_5b.branch1x1.conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(FidUnavailable, match="Mixed_5b.branch1x1.conv.weight"):
        load_inception(tmp_path / "partial.pth")
    state = random_pytorch_fid_state()
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(FidUnavailable, match="shape"):
        load_inception(tmp_path / "shape.pth")


def _save(folder, name, arr, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(folder / name)


def test_image_folders_bad_input(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    real, fake = tmp_path / "real", tmp_path / "fake"
    (tmp_path / "empty").mkdir()
    _save(real, "a.png", rgb)
    _save(fake, "a.png", rgb)
    a, b = load_folder_pair(real, fake)
    assert a.shape == b.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="empty"):
        load_folder_pair(tmp_path / "empty", fake)
    _save(real, "b.png", rgb)
    with pytest.raises(ValueError, match="pair up by name"):
        load_folder_pair(real, fake)
    _save(fake, "b.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"b.png: expected an RGB image, got mode 'L' \(grayscale\)"):
        load_folder_pair(real, fake)
    _save(fake, "b.png", np.zeros((16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match="mode 'RGBA'"):
        load_folder_pair(real, fake)
    _save(fake, "b.png", np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="differs from"):
        load_folder_pair(real, fake)


def test_scoring_against_a_reference_and_refusing_mismatched_sets(tmp_path):
    from cocosnet.metrics.scoring import paired_scores, swd_scores

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for i, image in enumerate(real):
        _save(tmp_path / "real", f"{i}.png", image)
        _save(tmp_path / "same", f"{i}.png", image)
        _save(tmp_path / "small", f"{i}.png", image[:8])
    files = {name: sorted((tmp_path / name).iterdir()) for name in ("real", "same", "small")}
    scores = paired_scores(files["real"], {"same": files["same"]})
    assert scores["l1"]["same"] == 0 and scores["ssim"]["same"] == pytest.approx(1)
    assert swd_scores(files["real"], {"same": files["same"]}, size=0, seed=0, independent_draws=False)["same"]["avg"] == 0
    assert swd_scores(files["real"], {"same": files["same"]}, size=0, seed=0)["same"]["avg"] > 1  # the floor
    with pytest.raises(ValueError, match="paired sets must have one size"):
        paired_scores(files["real"], {"small": files["small"]})
    with pytest.raises(ValueError, match="small: 2 images, but the reference set has 3"):
        paired_scores(files["real"], {"small": files["small"][:2]})
