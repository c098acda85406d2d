"""The pose-transfer protocol (PATN, GFLA, NTED, DPTN, PIDM, CFLD) beside CoCosNet's (docs/evaluation.md).

What differs from the CoCosNet protocol (`eval.protocol: cocosnet`):
  * outputs are scored at the photo's own size (256 high x 176 wide on In-shop): a model working on the
    padded square has its output cropped back to the photo's region and, when it works at another size,
    resized to the photo's (Pillow bicubic); targets and exemplars are the dataset's own files; all are
    written as PNG, not JPG (PIDM's recommendation: PNG and Pillow bicubic);
  * FID's real statistics come from the whole **training** split (`train.lst`), not the test targets, and its
    network is torchvision's ImageNet Inception-v3 (`cocosnet.metrics.fid.ImageNetInceptionV3`), fed as
    GFLA and PIDM feed it (`eval.pose_transfer_fid_input: gfla`, [0, 1] -> [-1, 1]) or as CFLD does
    (`cfld`); the fakes are the outputs of the val self pairs (the benchmark's test pairs);
  * SSIM is GFLA's `ssim_256` (also CFLD's and MCLD's; PIDM's with sigma 1.2): skimage's
    `structural_similarity` with `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`, over RGB
    on the 0-255 scale, with `data_range` the generated image's own max - min (`pose_transfer_ssim`;
    `eval.pose_transfer_ssim_sigma`);
  * LPIPS on AlexNet, v0.1 (cocosnet/metrics/lpips.py), on images in [-1, 1], as `lpips.LPIPS(net='alex')`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cocosnet.data.deepfashion import SquareFrame
from cocosnet.io import atomic_save
from cocosnet.metrics.fid import file_statistics, frechet_distance, load_inception
from cocosnet.metrics.paired import ssim

PROTOCOLS = ("cocosnet", "pose_transfer")


def crop_to_photo(square: np.ndarray, photo_size: tuple[int, int]) -> np.ndarray:
    """A uint8 (S, S, 3) image of the photo padded to a centred square (as `prepare` pads it) -> the photo's
    region, at the photo's (width, height): cropped, then resized with Pillow bicubic when S is not the
    padded photo's side."""
    frame = SquareFrame(*photo_size)
    side = square.shape[0]
    if square.shape[1] != side:
        raise ValueError(f"expected a square image, got {square.shape[1]}x{square.shape[0]}")
    scale = side / frame.side
    left, top = frame.offset
    x0, x1 = round(left * scale), round((left + photo_size[0]) * scale)
    y0, y1 = round(top * scale), round((top + photo_size[1]) * scale)
    crop = np.ascontiguousarray(square[y0:y1, x0:x1])
    if crop.shape[1::-1] == tuple(photo_size):
        return crop
    return np.asarray(Image.fromarray(crop).resize(tuple(photo_size), Image.Resampling.BICUBIC))


def pose_transfer_ssim(generated: Tensor, target: Tensor, *, sigma: float = 1.5) -> Tensor:
    """GFLA's `ssim_256`, per image (module doc): (B, 3, H, W) in [-1, 1], data range the generated image's
    max - min on the 0-255 scale (1 where the generated image is flat, where skimage would divide by 0), the
    window skimage derives from sigma (2 * int(3.5 sigma + 0.5) + 1: 11 px at 1.5, 9 at 1.2)."""
    g255 = (generated.float().clamp(-1, 1) + 1) * 127.5
    data_range = (g255.flatten(1).amax(1) - g255.flatten(1).amin(1)).clamp_min(1.0)
    return ssim(generated, target, window=2 * int(3.5 * sigma + 0.5) + 1, sigma=sigma, data_range=data_range)


def _stats_key(paths: list[Path], weights: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    w = Path(weights)
    h.update(f"{w.name}\0{w.stat().st_size}".encode())
    return h.hexdigest()


def training_statistics(paths: list[Path], weights: str, cache: Path, *, input_transform: str = "gfla",
                        device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Inception (ImageNet) statistics of the training images, cached in `cache` (an .npz) under a key of the
    files, the weights and the input transform: on the benchmark's 48,674 images they take long."""
    key = _stats_key(paths, weights) + input_transform
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["mu"], z["sigma"]
    model = load_inception(weights, imagenet=True, input_transform=input_transform)
    mu, sigma = file_statistics(paths, model, device=device)
    atomic_save(cache, lambda f: np.savez(f, mu=mu, sigma=sigma, key=np.array(key)))
    return mu, sigma


def pose_transfer_fid(train_images: list[Path], candidates: dict[str, list[Path]], *, weights: str, cache: Path,
                      input_transform: str = "gfla", device: torch.device | str = "cpu") -> dict:
    """{who: FID against the training images, "images": n fakes, "reference_images": n train images,
    "weights": name}; raises FidUnavailable without a usable torchvision Inception file."""
    model = load_inception(weights, imagenet=True, input_transform=input_transform)
    reference = training_statistics(train_images, weights, cache, input_transform=input_transform, device=device)
    out: dict = {who: frechet_distance(*reference, *file_statistics(files, model, device=device))
                 for who, files in candidates.items()}
    out.update(images=len(next(iter(candidates.values()))), reference_images=len(train_images),
               reference="training split", weights=Path(weights).name, input_transform=input_transform)
    return out


def describe(protocol: str, *, fid_input: str = "gfla", ssim_sigma: float = 1.5) -> dict:
    """What metrics.json records of the protocol it was scored under."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "cocosnet":
        return {"name": protocol, "format": "jpg", "size": "the model's square", "fid_reference": "val targets",
                "fid_network": "pytorch-fid Inception (TF graph)", "ssim": "Gaussian 11x11, sigma 1.5, L 255"}
    return {"name": protocol, "format": "png", "size": "the photo's own (In-shop 176x256)",
            "fid_reference": "training split", "fid_network": f"torchvision ImageNet Inception-v3, {fid_input} input",
            "ssim": f"skimage gaussian_weights sigma {ssim_sigma}, population covariance, data_range of the output"}
