"""FID: the Frechet distance between Inception-v3 pool3 statistics, as pytorch-fid computes it.

The network is the FID variant of Inception-v3 (the TF graph of 2015-12-05
ported to PyTorch by mseitzer/pytorch-fid), defined here so nothing is
downloaded. Its weights load from a local file in that port's key layout
(`pt_inception-2015-12-05-6726825d.pth`: torchvision `Inception3` names such
as `Mixed_5b.branch1x1.conv.weight`, with `fc.*` for 1008 classes, which FID
does not use). Inputs follow the reference: RGB in [0, 1], resized to 299x299
bilinearly (align_corners=False, no antialias), scaled to [-1, 1].

The pose-transfer protocol (PATN, GFLA, PCDMs, CFLD) uses another network: torchvision's ImageNet
`inception_v3` itself (`ImageNetInceptionV3`, weights `inception_v3_google-0cc3c7bd.pth` in torchvision's
layout), whose average-pool branches count the padding and whose last block pools by average, with the
same input handling (bilinear to 299x299, [0, 1] scaled to [-1, 1]; torchvision's own `transform_input`
is not applied, as those scripts call the blocks directly). The two give different FIDs for the same images.

FID is never computed with random weights: without the file the caller gets
`FidUnavailable` with the reason and how to provide it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import Tensor, nn

WEIGHTS_HINT = (
    "FID needs the pytorch-fid Inception weights file pt_inception-2015-12-05-6726825d.pth "
    "(from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth). Download it on a machine with internet, copy it here, "
    "and set `eval.inception_weights` in params.yaml to its path, e.g. "
    "`dvc exp run -S eval.inception_weights=weights/pt_inception-2015-12-05-6726825d.pth`")
IMAGENET_WEIGHTS_HINT = (
    "The pose-transfer protocol's FID needs torchvision's ImageNet Inception-v3 weights file "
    "inception_v3_google-0cc3c7bd.pth (https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth). "
    "Download it on a machine with internet, copy it here, and set `eval.imagenet_inception_weights` in "
    "params.yaml to its path")
FEATURE_DIM = 2048
# How the pose-transfer scripts feed [0, 1] images to torchvision's Inception after the bilinear resize to
# 299: GFLA and PIDM scale to [-1, 1] (2x - 1, the old torchvision-based pytorch-fid); CFLD applies
# torchvision's `transform_input` map (x * std / 0.5 + (mean - 0.5) / 0.5) to the [0, 1] images.
INPUT_TRANSFORMS = ("gfla", "cfld")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class FidUnavailable(RuntimeError):
    """FID cannot be computed here; str() says why and how to fix it."""


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU; names match torchvision."""

    def __init__(self, in_channels: int, out_channels: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor, tf: bool) -> Tensor:
    # The TF graph excludes the padding from the average (torchvision's blocks do not).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not tf)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int, *, tf: bool = True):
        super().__init__()
        self.tf = tf
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x, self.tf)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int, *, tf: bool = True):
        super().__init__()
        self.tf = tf
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x, self.tf))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool` is the TF graph's quirk in the last block (Mixed_7c): a max, not an average, pool branch."""

    def __init__(self, in_channels: int, *, max_pool: bool, tf: bool = True):
        super().__init__()
        self.max_pool, self.tf = max_pool, tf
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x, self.tf)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """images (N, 3, H, W) in [0, 1] -> pool3 features (N, 2048). `tf` True: the TF graph's network
    (pytorch-fid); False: torchvision's ImageNet `inception_v3` (`ImageNetInceptionV3`)."""

    def __init__(self, *, tf: bool = True, input_transform: str = "gfla"):
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}, got {input_transform!r}")
        self.input_transform = input_transform
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32, tf=tf)
        self.Mixed_5c = InceptionA(256, pool_features=64, tf=tf)
        self.Mixed_5d = InceptionA(288, pool_features=64, tf=tf)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, tf=tf)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, tf=tf)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, tf=tf)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, tf=tf)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False, tf=tf)
        self.Mixed_7c = InceptionE(2048, max_pool=tf, tf=tf)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.input_transform == "cfld":  # CFLD: torchvision's ImageNet-to-[-1, 1] map applied to [0, 1]
            x = x * IMAGENET_STD.to(x) / 0.5 + (IMAGENET_MEAN.to(x) - 0.5) / 0.5
        else:
            x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 2048)


def ImageNetInceptionV3(input_transform: str = "gfla") -> FIDInceptionV3:  # noqa: N802 - a constructor
    """torchvision's ImageNet Inception-v3 as the pose-transfer protocol's FID uses it."""
    return FIDInceptionV3(tf=False, input_transform=input_transform)


def load_inception(path: str | Path, *, imagenet: bool = False, input_transform: str = "gfla") -> FIDInceptionV3:
    """The FID network with weights from `path` (pytorch-fid layout; with `imagenet`, torchvision's
    `inception_v3` and its layout, fed as `input_transform` says); FidUnavailable when absent or wrong."""
    key, hint = ("eval.imagenet_inception_weights", IMAGENET_WEIGHTS_HINT) if imagenet else (
        "eval.inception_weights", WEIGHTS_HINT)
    if not str(path):
        raise FidUnavailable(f"`{key}` is not set. {hint}")
    path = Path(path)
    if not path.is_file():
        raise FidUnavailable(f"Inception weights file {path} does not exist. {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise FidUnavailable(f"cannot read Inception weights {path}: {exc}. {hint}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    model = FIDInceptionV3(tf=not imagenet, input_transform=input_transform if imagenet else "gfla")
    expected = model.state_dict()
    unused = ("fc.", "AuxLogits.")  # the classifier heads; FID reads pool3
    state = {k: v for k, v in state.items() if not k.startswith(unused) and not k.endswith("num_batches_tracked")}
    wanted = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        layout = "torchvision Inception-v3" if imagenet else "pytorch-fid Inception"
        raise FidUnavailable(f"{path} is not in the {layout} layout: missing keys {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''}. {hint}")
    for name in wanted:
        if tuple(state[name].shape) != tuple(expected[name].shape):
            raise FidUnavailable(f"{path}: `{name}` has shape {tuple(state[name].shape)}, expected "
                                 f"{tuple(expected[name].shape)}. {hint}")
    model.load_state_dict(state, strict=False)
    return model.eval()


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: np.ndarray, *, batch_size: int = 50,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """uint8 (N, H, W, 3) -> float64 (N, 2048)."""
    model = model.to(device).eval()
    feats = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        feats.append(model(x.permute(0, 3, 1, 2).float() / 255).double().cpu())
    out = torch.cat(feats).numpy()
    if not np.isfinite(out).all():
        raise ValueError("Inception features contain NaN or infinite values (are the weights corrupt?)")
    return out


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,), covariance (D, D) with N - 1 normalisation (np.cov)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    As pytorch-fid: when sqrtm of the product is not finite (singular covariances,
    e.g. fewer samples than dimensions), eps is added to both diagonals and it is
    retried; a complex result with a negligible imaginary diagonal (|imag| <= 1e-3)
    keeps its real part, anything larger is an error."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}/{mu2.shape}, "
                         f"covariances {sigma1.shape}/{sigma2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected and handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm left an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def file_statistics(paths: list[Path], model: FIDInceptionV3, *, batch_size: int = 50,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics of image files, read a batch at a time (pytorch-fid's folder mode)."""
    from cocosnet.metrics.images import chunks, load_image_set

    feats = [inception_features(model, load_image_set(chunk), batch_size=batch_size, device=device)
             for chunk in chunks(paths, batch_size)]
    return statistics(np.concatenate(feats))


def fid(real: np.ndarray, fake: np.ndarray, model: FIDInceptionV3, *, batch_size: int = 50,
        device: str | torch.device = "cpu") -> float:
    """FID between two uint8 (N, H, W, 3) sets (the counts may differ, as in pytorch-fid)."""
    for name, arr in (("real", real), ("fake", fake)):
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{name}: expected (N, H, W, 3) RGB images, got shape {arr.shape}")
    m1, s1 = statistics(inception_features(model, real, batch_size=batch_size, device=device))
    m2, s2 = statistics(inception_features(model, fake, batch_size=batch_size, device=device))
    return frechet_distance(m1, s1, m2, s2)
