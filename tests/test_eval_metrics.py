import numpy as np
import pytest
import torch

from cocosnet.data.deepfashion import read_split_list
from cocosnet.metrics.correspondence import (
    endpoint_errors,
    gt_in_crop,
    level_errors,
    level_gt,
    person_in_crop,
    refinement_bounds,
    summarise,
)
from cocosnet.metrics.paired import l1, psnr, ssim


def test_paired_metrics_on_known_cases():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert torch.equal(l1(a, a), torch.zeros(2))
    b = (a + 2 * 10 / 255).clamp(-1, 1)  # +10 grey levels where not clipped
    assert l1(a, b).max() <= 10 / 255 + 1e-6
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    assert ssim(a, noisy).max() < 0.9 and psnr(a, noisy).max() < psnr(a, b).min()
    flat = torch.zeros(1, 3, 16, 16)
    assert psnr(flat, flat + 2 / 255).item() == pytest.approx(10 * np.log10(255 ** 2), abs=0.01)
    with pytest.raises(ValueError, match="NaN"):
        l1(a, a * float("nan"))
    with pytest.raises(ValueError, match="equal shape"):
        ssim(a, a[:1])


def test_ground_truth_in_the_crop_maps_a_view_onto_itself(tiny_raw):
    rel = read_split_list(tiny_raw / "train.txt")[0].paths[0]
    gt, valid = gt_in_crop(tiny_raw, rel, rel, load_size=72, crop=64, target_offset=(4, 4), exemplar_offset=(4, 4))
    assert valid.sum() > 100
    ys, xs = np.nonzero(valid)
    err = np.abs(gt[ys, xs] - np.stack([xs, ys], 1))
    assert np.median(err) < 0.6 and err.max() < 1.5  # nearest native pixel, resampled to the working frame
    shifted, v2 = gt_in_crop(tiny_raw, rel, rel, load_size=72, crop=64, target_offset=(4, 4), exemplar_offset=(0, 4))
    both = valid & v2
    assert np.allclose(shifted[both][:, 0] - gt[both][:, 0], 4.0, atol=1e-4)


def test_a_views_matched_pixels_are_on_its_body_and_the_body_is_a_part_of_the_crop(tiny_raw):
    rel = read_split_list(tiny_raw / "train.txt")[0].paths[0]
    _, valid = gt_in_crop(tiny_raw, rel, rel, load_size=72, crop=64, target_offset=(4, 4), exemplar_offset=(4, 4))
    person = person_in_crop(tiny_raw, rel, load_size=72, crop=64, target_offset=(4, 4))
    assert person.shape == (64, 64) and 100 < person.sum() < 64 * 64 * 0.9
    assert not (valid & ~person).any()  # a true match lies on the body
    assert (valid & person).sum() >= 0.9 * person.sum()  # a view matches itself almost everywhere


def test_level_gt_and_errors():
    gt = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1)[None]
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    lg, lv = level_gt(gt, valid, (4, 4))
    assert lg.shape == (1, 4, 4, 2) and lv.all()
    errs = endpoint_errors(lg, lg, lv)
    assert summarise(errs)["epe_px"] == 0.0 and summarise(errs)["acc_1px"] == 1.0
    assert summarise(torch.tensor([]))["pixels"] == 0


def test_best_of_k_errors_and_the_refinement_bounds():
    gt = torch.zeros(1, 2, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    # per pixel: candidate 0 (the top-1) is off by 4, 2, 0.5, 9 px in x; candidate 1 by 1, 5, 0, 0
    coords = torch.zeros(1, 2, 2, 2, 2)
    coords[0, :, :, 0, 0] = torch.tensor([[4.0, 2.0], [0.5, 9.0]])
    coords[0, :, :, 1, 0] = torch.tensor([[1.0, 5.0], [0.0, 0.0]])
    top = level_errors([coords], gt, valid)[0]
    best = level_errors([coords], gt, valid, best_of_k=True)[0]
    assert top.tolist() == [4.0, 2.0, 0.5] and best.tolist() == [1.0, 2.0, 0.0]  # the invalid pixel is left out
    bounds = refinement_bounds(top, best)
    assert abs(bounds["epe_beyond_3px"] - 4.0 / 3) < 1e-6  # only the 4 px error is beyond local refinement
    assert bounds["best_of_k_epe_px"] == 1.0
    assert abs(bounds["rank_acc"] - 1 / 3) < 1e-6  # only the 2 px pixel has its best candidate first
    assert refinement_bounds(best, best)["rank_acc"] == 1.0


def test_ssim_matches_a_direct_scipy_transcription_of_wang_et_al():
    import scipy.ndimage

    rng = np.random.default_rng(3)
    a = rng.uniform(0, 255, (20, 24, 3))
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255)
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(img):  # valid region only
        return scipy.ndimage.correlate(img, w, mode="constant")[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for ch in range(3):
        p, q = a[..., ch], b[..., ch]
        mp, mq = filt(p), filt(q)
        vp, vq, cpq = filt(p * p) - mp ** 2, filt(q * q) - mq ** 2, filt(p * q) - mp * mq
        per_channel.append((((2 * mp * mq + c1) * (2 * cpq + c2)) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2))).mean())
    to_t = lambda img: torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    assert ssim(to_t(a), to_t(b)).item() == pytest.approx(np.mean(per_channel), abs=1e-4)
