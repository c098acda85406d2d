import numpy as np
import pytest
import torch

from cocosnet.data.deepfashion import read_split_list
from cocosnet.metrics.correspondence import endpoint_errors, gt_in_crop, level_gt, summarise
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


def test_level_gt_and_errors():
    gt = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1)[None]
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    lg, lv = level_gt(gt, valid, (4, 4))
    assert lg.shape == (1, 4, 4, 2) and lv.all()
    errs = endpoint_errors(lg, lg, lv)
    assert summarise(errs)["epe_px"] == 0.0 and summarise(errs)["acc_1px"] == 1.0
    assert summarise(torch.tensor([]))["pixels"] == 0
