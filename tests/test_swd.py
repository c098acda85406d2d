"""SWD against a direct NumPy/SciPy transcription of the PGGAN protocol."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from cocosnet.metrics.swd import (
    laplacian_pyramid,
    random_centres,
    random_directions,
    resolutions,
    sliced_wasserstein,
    swd_from_draws,
)
from cocosnet.metrics.swd_reference import np_pyramid, np_swd


def _images(n, size, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    smooth = np.kron(base, np.ones((1, 8, 8, 1), np.float32))
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def test_pyramid_matches_scipy_mirror_convolution():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    ours = laplacian_pyramid(torch.from_numpy(x), 2)
    ref = np_pyramid(x, 2)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-3)


def test_agrees_with_numpy_transcription_given_the_same_draws():
    real, fake = _images(5, 32, 1), _images(5, 32, 2)
    levels = resolutions(32, 32)
    assert levels == [32, 16]
    rng = np.random.default_rng(3)
    cr = [np.stack([rng.integers(3, s - 3, 5 * 128), rng.integers(3, s - 3, 5 * 128)], 1) for s in levels]
    cf = [np.stack([rng.integers(3, s - 3, 5 * 128), rng.integers(3, s - 3, 5 * 128)], 1) for s in levels]
    dirs = []
    for _ in levels:
        d = rng.standard_normal((4, 147, 128))
        dirs.append((d / np.sqrt((d ** 2).sum(1, keepdims=True))).astype(np.float32))
    ref = np_swd(real, fake, cr, cf, dirs)
    ours = swd_from_draws(torch.from_numpy(real), torch.from_numpy(fake),
                          [torch.from_numpy(c) for c in cr], [torch.from_numpy(c) for c in cf],
                          [torch.from_numpy(d) for d in dirs], batch_size=2)
    assert list(ours) == ["32", "16", "avg"]
    np.testing.assert_allclose([ours["32"], ours["16"], ours["avg"]], ref, rtol=1e-4)


def _reference_mean(real, fake, seeds=range(3)):
    """The mean of the NumPy reference over independent draws from NumPy's RandomState, as PGGAN draws."""
    levels = resolutions(real.shape[1], real.shape[2])
    n = real.shape[0]
    refs = []
    for s in seeds:
        rng = np.random.RandomState(100 + s)
        c = [[np.stack([rng.randint(3, r - 3, n * 128), rng.randint(3, r - 3, n * 128)], 1) for r in levels]
             for _ in range(2)]
        d = [rng.randn(4, 147, 128) for _ in levels]
        d = [(x / np.sqrt((x ** 2).sum(1, keepdims=True))).astype(np.float32) for x in d]
        refs.append(np_swd(real, fake, c[0], c[1], d)[-1])
    return float(np.mean(refs))


def _blur(images):
    return scipy.ndimage.uniform_filter(images.astype(np.float32), size=(1, 3, 3, 1)).round().astype(np.uint8)


def test_the_default_is_the_reference_protocol_on_unrelated_blurred_and_shifted_sets():
    real, fake = _images(12, 64, 4), _images(12, 64, 5)
    shifted = np.clip(real.astype(int) + 30, 0, 255).astype(np.uint8)
    for other in (fake, _blur(real), shifted):
        ref = _reference_mean(real, other)
        ours = np.mean([sliced_wasserstein(real, other, seed=s)["avg"] for s in range(3)])
        assert abs(ours - ref) < 0.15 * ref, (ours, ref)
    # Shared draws (the variant) agree on unrelated sets but score a blur far below the reference.
    shared = np.mean([sliced_wasserstein(real, fake, seed=s, independent_draws=False)["avg"] for s in range(3)])
    assert abs(shared - _reference_mean(real, fake)) < 0.25 * _reference_mean(real, fake)
    blur_shared = np.mean([sliced_wasserstein(real, _blur(real), seed=s, independent_draws=False)["avg"]
                           for s in range(3)])
    assert blur_shared < 0.8 * _reference_mean(real, _blur(real))
    floor = sliced_wasserstein(real, real, seed=0)["avg"]
    assert floor > 1.0  # the reference's sampling floor, which shared draws remove


def test_identical_sets_score_about_zero_and_perturbations_rank():
    real = _images(16, 64, 6)
    same = sliced_wasserstein(real, real.copy(), seed=1, independent_draws=False)
    assert set(same) == {"64", "32", "16", "avg"}
    assert same["avg"] < 1e-3
    rng = np.random.default_rng(7)
    scores = []
    for sigma in (4, 16, 48):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        scores.append(sliced_wasserstein(real, noisy, seed=1, independent_draws=False)["avg"])
    assert scores[0] < scores[1] < scores[2]
    assert sliced_wasserstein(real, real, seed=2) == sliced_wasserstein(real, real, seed=2)


def test_a_global_colour_shift_scores_low_because_each_set_is_normalised():
    real = _images(16, 32, 8)
    shifted = np.clip(real.astype(int) + 30, 0, 255).astype(np.uint8)
    noisy = np.clip(real + np.random.default_rng(0).normal(0, 30, real.shape), 0, 255).astype(np.uint8)
    assert sliced_wasserstein(real, shifted)["avg"] < sliced_wasserstein(real, noisy)["avg"]


def test_bad_input_errors():
    a = _images(2, 32, 0)
    with pytest.raises(ValueError, match="same count and size"):
        sliced_wasserstein(a, a[:1])
    with pytest.raises(ValueError, match="same count and size"):
        sliced_wasserstein(a, _images(2, 64, 0))
    with pytest.raises(ValueError, match="RGB"):
        sliced_wasserstein(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="RGB"):
        sliced_wasserstein(np.zeros((2, 32, 32, 4), np.uint8), np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(a.astype(np.float32) * np.nan, a.astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        sliced_wasserstein(a[:0], a[:0])
    with pytest.raises(ValueError, match="16 px"):
        sliced_wasserstein(a[:, :8, :8], a[:, :8, :8])
    centres = random_centres(1, 16, 16, torch.Generator().manual_seed(0))
    assert centres.min() >= 3 and centres.max() <= 12
    assert torch.allclose(random_directions(147, torch.Generator()).norm(dim=1), torch.ones(4, 128))
