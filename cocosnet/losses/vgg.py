"""VGG19 for the perceptual, feature-matching and contextual losses, defined in the project.

Weights load from a local file (params: vgg.weights), in either layout:
  * torchvision style, `features.N.weight` (N = index in the features Sequential);
  * the official CoCosNet `vgg19_conv.pth`, `conv1_1.weight` ... `conv5_4.weight`.
Random weights only when params.yaml says `vgg.weights: random`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocosnet.errors import WeightsError, WeightsNotFound
from cocosnet.state_file import read_state_dict

# (name, in, out) per conv up to conv5_2; pooling after conv1_2, 2_2, 3_4, 4_4.
CONVS = (("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
         ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
         ("conv5_1", 512, 512), ("conv5_2", 512, 512))
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4", "conv4_4"}
LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
# torchvision's features.N index of each conv (ReLU and MaxPool take the other indices).
TORCHVISION_INDEX = dict(zip([c[0] for c in CONVS], (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30)))
BGR_MEAN = (0.40760392, 0.45795686, 0.48501961)
WEIGHTS_HELP = (
    "Get the official vgg19_conv.pth (linked from the CoCosNet v2 README, saved there as vgg/vgg19_conv.pth) "
    "or a torchvision-layout VGG19 state dict (features.N.weight), and put it at that path; or set "
    "`vgg.weights: random` in params.yaml to train the perceptual losses with a random VGG19 "
    "(the run is then tagged vgg_weights=random).")


class VGG19(nn.Module):
    """Frozen VGG19 conv stack returning relu1_2 ... relu5_2, with Caffe-style preprocessing."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleDict({name: nn.Conv2d(cin, cout, 3, padding=1) for name, cin, cout in CONVS})
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19:
        return super().train(False)  # always frozen

    def preprocess(self, image: Tensor) -> Tensor:
        """[-1, 1] RGB -> [0, 1] -> BGR -> minus the BGR mean -> x 255 (the official vgg_normal_correct path)."""
        x = (image + 1) / 2
        return (x.flip(1) - self.mean.to(x.dtype)) * 255

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        x = self.preprocess(image)
        out = {}
        for name, conv in self.convs.items():
            x = F.relu(conv(x))
            relu = "relu" + name[4:]
            if relu in LAYERS:
                out[relu] = x
            if name in POOL_AFTER:
                x = F.max_pool2d(x, 2, 2)
        return out


def _to_project_layout(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    names = [c[0] for c in CONVS]
    if all(f"{n}.weight" in state for n in names):
        return {f"convs.{n}.{p}": state[f"{n}.{p}"] for n in names for p in ("weight", "bias")}
    if all(f"features.{TORCHVISION_INDEX[n]}.weight" in state for n in names):
        return {f"convs.{n}.{p}": state[f"features.{TORCHVISION_INDEX[n]}.{p}"] for n in names for p in ("weight", "bias")}
    sample = ", ".join(list(state)[:4])
    raise WeightsError(f"{source}: not a VGG19 state dict in either accepted layout "
                     f"(conv1_1.weight ... or features.N.weight); its keys start {sample}")


def load_vgg19(weights: str, *, base: Path = Path(".")) -> VGG19:
    """Build the VGG19; `weights` is a file path (relative to `base`) or the literal 'random'."""
    vgg = VGG19()
    if weights == "random":
        return vgg
    path = Path(weights) if Path(weights).is_absolute() else base / weights
    if not path.is_file():
        raise WeightsNotFound(f"VGG19 weights not found: {path} (params.yaml vgg.weights). {WEIGHTS_HELP}")
    state = read_state_dict(path, what="VGG19 weights file", hint=WEIGHTS_HELP)
    mapped = _to_project_layout(state, str(path))
    for key, value in mapped.items():
        expected = vgg.state_dict()[key].shape
        if value.shape != expected:
            raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected)}")
    vgg.load_state_dict(mapped)
    return vgg
