"""Building blocks: positional norm, SPADE, SPADE residual block, residual block, SN+IN conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from cocosnet.models import memory


def positional_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """PONO: normalise each pixel over its channels (mean 0, unit std), with the unbiased variance and
    eps 1e-8 as the official code (which the official weights need). The variance is written out
    rather than `var(dim=1)`, whose reduction across the channel stride is about 2x slower on CPU
    (equal to float rounding). A channels-last map, whose channels are innermost, is one `layer_norm`
    over them instead: the same normalisation rescaled, one pass rather than six (docs/performance.md)."""
    if is_channels_last(x) and x.shape[1] > 1:
        c = x.shape[1]
        # (x - mean) / sqrt(var_b * c / (c - 1) + eps) = sqrt((c - 1) / c) * (x - mean) / sqrt(var_b + eps')
        scale = x.new_full((c,), ((c - 1) / c) ** 0.5)
        return F.layer_norm(x.permute(0, 2, 3, 1), (c,), scale, None, eps * (c - 1) / c).permute(0, 3, 1, 2)
    centred = x - x.mean(dim=1, keepdim=True)
    var = centred.square().sum(dim=1, keepdim=True) / (x.shape[1] - 1)
    return centred / (var + eps).sqrt()


class PositionalNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return positional_norm(x)


def centre_and_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """PONO_C for matching features: subtract the per-pixel channel mean, then L2-normalise over C."""
    return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1, eps=eps)


def is_channels_last(x: Tensor) -> bool:
    """Stored channels-last and not also plain contiguous (C = 1 or 1 x 1 maps are both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class InstanceNorm(nn.InstanceNorm2d):
    """nn.InstanceNorm2d without affine or running statistics that keeps a channels-last input
    channels-last: the built-in one returns NCHW, and the convolutions after it would convert back
    (the alignment U-Nets run channels-last at inference, models/align.py). Equal to float rounding.
    Its statistics are means, not `var_mean`, whose one-pass reduction over a channels-last map's
    spatial dims runs at about 1 GB/s here, 20x slower than a sum over them (docs/performance.md)."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if not is_channels_last(x):
            return super().forward(x)
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        scale = torch.rsqrt(centred.square().mean(dim=(2, 3), keepdim=True) + self.eps)
        return centred * scale if torch.is_grad_enabled() else centred.mul_(scale)


class ReflectionPad(nn.Module):
    """Reflection padding that falls back to replication on maps too small to reflect (1x1 at 1/32)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        mode = "reflect" if min(x.shape[-2:]) > self.pad else "replicate"
        return F.pad(x, (self.pad,) * 4, mode=mode)


class SPADE(nn.Module):
    """Parameter-free positional norm, then x_hat * (1 + gamma(seg)) + beta(seg). The three 3x3 convs
    reflection-pad their input, as the official ones do (`mlp_shared` = pad, conv, ReLU)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.pad = ReflectionPad(1)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, norm_nc, 3)
        self.beta = nn.Conv2d(hidden, norm_nc, 3)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        """x (B, norm_nc, H, W), seg (B, label_nc, h, w) resized to (H, W) by nearest.

        At full resolution the hidden maps (B, hidden, H, W) are most of what the alignment U-Nets
        keep for backward, so large calls are checkpointed (models/memory.py); there is no
        spectral norm or randomness inside, so the recomputation is exact. Without autograd, large
        calls run in row tiles (`_modulate_tiled`), so no full-size hidden map exists at all."""
        seg = resize_to(seg, tuple(x.shape[-2:]))
        hidden = seg.shape[0] * self.shared[0].out_channels * seg.shape[-2] * seg.shape[-1]
        rows = memory.spade_tile_rows(hidden, *seg.shape[-2:])
        if rows is not None:
            return self._modulate_tiled(x, seg, rows=rows)
        return memory.checkpoint(self._modulate, x, seg, elements=hidden * 3)

    def _modulate(self, x: Tensor, seg: Tensor) -> Tensor:
        act = self.pad(self.shared(self.pad(seg)))
        return positional_norm(x) * (1 + self.gamma(act)) + self.beta(act)

    def _modulate_tiled(self, x: Tensor, seg: Tensor, rows: int) -> Tensor:
        """`_modulate` `rows` output rows at a time (rows >= 2, maps of at least 2 x 2): each tile computes
        the hidden rows it reads, one beyond each side, and reflects them at the map's top and bottom
        as the whole-map padding does. Equal to `_modulate` up to float rounding."""
        height, c = x.shape[-2], x.shape[1]
        seg = self.pad(seg)  # (B, L, H + 2, W + 2)
        out = positional_norm(x)
        # gamma and beta as one convolution (2C outputs run faster than two of C here), the 1 of
        # (1 + gamma) in its bias
        weight = torch.cat([self.gamma.weight, self.beta.weight])
        bias = torch.cat([self.gamma.bias + 1, self.beta.bias])
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            first, last = max(top - 1, 0), min(bottom + 1, height)  # hidden rows this tile reads
            act = F.pad(self.shared(seg[:, :, first:last + 2]), (1, 1, 0, 0), mode="reflect")
            if top == 0:
                act = torch.cat([act[:, :, 1:2], act], dim=2)
            if bottom == height:
                act = torch.cat([act, act[:, :, -2:-1]], dim=2)
            tile = out[:, :, top:bottom]  # (B, C, rows, W), a view: modulated in place
            scale, shift = F.conv2d(act, weight, bias).split(c, dim=1)
            torch.addcmul(shift, tile, scale, out=tile)
        return out


def _sn_conv(fin: int, fout: int, kernel: int, *, bias: bool = True) -> nn.Sequential:
    pad = kernel // 2
    layers: list[nn.Module] = [ReflectionPad(pad)] if pad else []
    layers.append(spectral_norm(nn.Conv2d(fin, fout, kernel, bias=bias)))
    return nn.Sequential(*layers)


def spectral_weight(conv: nn.Conv2d) -> Tensor:
    """The weight a spectral-norm conv uses in this forward: runs its hook once, which is what calling
    the module would do (one power iteration in training mode), and returns the normalised weight.
    A checkpointed function that takes this weight as an argument recomputes the same convolution;
    calling the module inside it would run the power iteration, and update `u`, a second time."""
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm):
            hook(conv, None)
    return conv.weight


def conv_with(conv: nn.Conv2d, x: Tensor, weight: Tensor) -> Tensor:
    """`conv`'s convolution (bias, stride, padding) with the given weight, its hooks not run."""
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _padded_conv(layers: nn.Sequential, x: Tensor, weight: Tensor) -> Tensor:
    """An `_sn_conv` (optional reflection pad, then the conv) with the given weight."""
    if len(layers) > 1:
        x = layers[0](x)
    return conv_with(layers[-1], x, weight)


class SPADEResBlock(nn.Module):
    """SPADE residual block: spectral norm, reflection padding, learned 1x1 shortcut when fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int, *, spade_hidden: int = 128):
        super().__init__()
        fmid = min(fin, fout)
        self.norm_0 = SPADE(fin, label_nc, spade_hidden)
        self.conv_0 = _sn_conv(fin, fmid, 3)
        self.norm_1 = SPADE(fmid, label_nc, spade_hidden)
        self.conv_1 = _sn_conv(fmid, fout, 3)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, spade_hidden)
            self.conv_s = _sn_conv(fin, fout, 1, bias=False)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        """x (B, fin, H, W), seg (B, label_nc, h, w) -> (B, fout, H, W)."""
        shortcut = self._branch(self.norm_s, self.conv_s, x, seg, act=False) if self.learned_shortcut else x
        dx = self._branch(self.norm_0, self.conv_0, x, seg)
        dx = self._branch(self.norm_1, self.conv_1, dx, seg)
        return shortcut + dx

    def _branch(self, norm: SPADE, conv: nn.Sequential, x: Tensor, seg: Tensor, *, act: bool = True) -> Tensor:
        """conv(leaky_relu(norm(x, seg))), or conv(norm(x, seg)) for the shortcut.

        At full resolution a branch keeps its SPADE's hidden maps and about 3 input-sized maps, so
        large branches are checkpointed, one at a time (so backward recomputes one branch's maps at
        a time; the SPADE is then not checkpointed on its own). The spectral-norm weight is computed
        once, here, and passed in, so the recomputation is exact."""
        weight = spectral_weight(conv[-1])
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        kept = pixels * (3 * norm.shared[0].out_channels + memory.BRANCH_MAPS_KEPT * x.shape[1])
        return memory.checkpoint(_spade_branch, norm, conv, act, x, seg, weight, elements=kept)


def _spade_branch(norm: SPADE, conv: nn.Sequential, act: bool, x: Tensor, seg: Tensor, weight: Tensor) -> Tensor:
    h = norm(x, seg)
    if act:  # in place without autograd: one full-size map fewer to allocate (and fault in) at 1024^2
        h = F.leaky_relu(h, 0.2) if torch.is_grad_enabled() else F.leaky_relu_(h, 0.2)
    return _padded_conv(conv, h, weight)


class ResidualBlock(nn.Module):
    """Reflection pad, 3x3 conv, IN, PReLU, 3x3 conv, IN, add, PReLU (one shared slope).

    The convs have no bias: InstanceNorm removes it anyway (the official ones
    carry a dead bias, whose zero gradient Adam turns into noise)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ReflectionPad(1), nn.Conv2d(channels, channels, 3, bias=False), InstanceNorm(channels),
            nn.PReLU(), ReflectionPad(1), nn.Conv2d(channels, channels, 3, bias=False), InstanceNorm(channels))
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> the same shape. Large calls (the full-resolution encoder block of the
        official widths) are checkpointed; no spectral norm, running statistics or randomness inside,
        so the recomputation is exact."""
        return memory.checkpoint(self._residual, x, elements=x.numel() * memory.RESIDUAL_MAPS_KEPT)

    def _residual(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def sn_in_conv(fin: int, fout: int, kernel: int, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """Spectral-norm conv (no bias) followed by InstanceNorm without affine ('spectralinstance')."""
    pad = kernel // 2 if padding is None else padding
    return nn.Sequential(spectral_norm(nn.Conv2d(fin, fout, kernel, stride, pad, bias=False)), InstanceNorm(fout))


def resize_to(x: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.adaptive_avg_pool2d(x, size)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs)


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes of a pyramid from coarse to fine: (H/2^(levels-1), ...) ... (H, W), ceil-halved."""
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[0]
        sizes.insert(0, ((h + 1) // 2, (w + 1) // 2))
    return sizes

