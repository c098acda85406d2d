"""LPIPS (Zhang et al., CVPR 2018), version 0.1 on AlexNet: the distance `lpips.LPIPS(net='alex')` computes,
defined here so that neither torchvision nor the `lpips` package is needed.

For images x0, x1 in [-1, 1]: each is shifted and scaled per channel (shift (-0.030, -0.088, -0.188),
scale (0.458, 0.448, 0.450)), run through AlexNet's convolutional trunk, and at its five ReLU outputs
(64, 192, 384, 256, 256 channels) the features are normalised to unit length over channels; the squared
difference of the two is weighted per channel by a learned linear head (a 1x1 convolution without bias),
averaged over space, and the five layers are summed.

Weights load from two local files, never downloaded:
  * the linear heads: `alex.pth` of version 0.1, as the `lpips` wheel on PyPI ships it
    (`lpips/weights/v0.1/alex.pth`, keys `lin<i>.model.1.weight`, shape (1, C, 1, 1));
  * the AlexNet trunk: torchvision's ImageNet file `alexnet-owt-7be5be79.pth` (keys `features.<i>.weight`
    and `.bias` for the convolutions at 0, 3, 6, 8, 10; the classifier is not used).
Without either, `load_lpips` raises `LpipsUnavailable` with the reason and how to provide it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
CONV_INDICES = (0, 3, 6, 8, 10)  # in torchvision's `alexnet().features`
EPS = 1e-10
HINT = ("LPIPS needs two local files: the v0.1 AlexNet linear heads `alex.pth` (in the `lpips` wheel on PyPI, "
        "`pip download lpips==0.1.4 --no-deps` and unzip `lpips/weights/v0.1/alex.pth`), set as "
        "`eval.lpips_weights`, and torchvision's ImageNet AlexNet `alexnet-owt-7be5be79.pth` "
        "(https://download.pytorch.org/models/alexnet-owt-7be5be79.pth), set as `eval.alexnet_weights`")


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be computed here; str() says why and how to fix it."""


class AlexNetTrunk(nn.Module):
    """torchvision's `alexnet().features` (same indices, so its state dict loads as is); forward returns the
    five ReLU outputs LPIPS reads."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                out.append(x)
        return out


class LPIPS(nn.Module):
    """(x0, x1) (N, 3, H, W) in [-1, 1] -> (N,) distances."""

    def __init__(self):
        super().__init__()
        self.trunk = AlexNetTrunk()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        f0 = self.trunk((x0 - self.shift) / self.scale)
        f1 = self.trunk((x1 - self.shift) / self.scale)
        total = x0.new_zeros(x0.shape[0])
        for a, b, head in zip(f0, f1, self.heads):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + EPS)
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


def _read(path: str | Path, key: str, what: str) -> dict[str, Tensor]:
    if not str(path):
        raise LpipsUnavailable(f"`{key}` is not set. {HINT}")
    path = Path(path)
    if not path.is_file():
        raise LpipsUnavailable(f"{what} file {path} (`{key}`) does not exist. {HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise LpipsUnavailable(f"cannot read {what} {path}: {exc}. {HINT}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LpipsUnavailable(f"{path}: expected a state dict of {what}, got {type(state).__name__}. {HINT}")
    return state


def _take(state: dict[str, Tensor], names: dict[str, str], expected: dict[str, Tensor], path, what) -> dict:
    """state[source] for each (ours <- source) name, shape-checked."""
    out = {}
    for ours, source in names.items():
        if source not in state:
            raise LpipsUnavailable(f"{path} is not {what}: it has no `{source}`. {HINT}")
        if tuple(state[source].shape) != tuple(expected[ours].shape):
            raise LpipsUnavailable(f"{path}: `{source}` has shape {tuple(state[source].shape)}, expected "
                                   f"{tuple(expected[ours].shape)}. {HINT}")
        out[ours] = state[source]
    return out


def load_lpips(heads: str | Path, alexnet: str | Path) -> LPIPS:
    """LPIPS with the v0.1 linear heads from `heads` and the AlexNet trunk from `alexnet` (module doc)."""
    model = LPIPS()
    expected = model.state_dict()
    head_state = _read(heads, "eval.lpips_weights", "the LPIPS linear heads")
    trunk_state = _read(alexnet, "eval.alexnet_weights", "torchvision's AlexNet weights")
    loaded = _take(head_state, {f"heads.{i}.weight": f"lin{i}.model.1.weight" for i in range(len(CHANNELS))},
                   expected, heads, "LPIPS v0.1 linear heads (keys lin<i>.model.1.weight)")
    conv = {f"trunk.features.{i}.{p}": f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    loaded.update(_take(trunk_state, conv, expected, alexnet, "a torchvision AlexNet state dict"))
    model.load_state_dict({**expected, **loaded})
    return model.eval()


@torch.no_grad()
def lpips_distance(model: LPIPS, x0: Tensor, x1: Tensor) -> Tensor:
    """Per-image LPIPS of two (N, 3, H, W) batches in [-1, 1]."""
    if x0.shape != x1.shape or x0.dim() != 4 or x0.shape[1] != 3:
        raise ValueError(f"expected two (N, 3, H, W) batches of equal shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    return model(x0.float(), x1.float())
