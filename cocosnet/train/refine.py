"""The `refine` stage's trainer: the refiner alone, on the frozen matcher and generator of the GAN stage.

The refiner learns to beat the warp only from some 10^4 samples at batch 8 or more
(docs/decisions/2026-12-06-candidate-selector.md), more than the GAN stage can afford on a CPU,
where one GAN step costs 0.55 s a sample at 64 px against 0.02 s for the refiner. So the frozen part
runs once per crop of a fixed pool (`refine.pool` training self pairs, one crop each), its finest
candidates, their scores and the generated image are kept in memory, and the refiner trains on those
for `refine.steps` steps of `refine.batch_size`. The frozen pass is deterministic (eval mode,
PatchMatch seeded by the pool index), so a resumed run rebuilds the same cache and ends at the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset

from cocosnet.config import RefineConfig
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.models.refiner import refiner_inputs
from cocosnet.train.schedule import lr_at
from cocosnet.train.trainer import sample_generators


def refine_terms(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(L1, L1 of the horizontal and vertical differences) of output against target, (B, 3, H, W) each.
    The second term rewards edges where the target has them: with L1 alone the refiner first blurs, and
    its SWD lags the warp's (docs/studies/generation.md, section 8)."""
    edges = ((output.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
             + (output.diff(dim=-2) - target.diff(dim=-2)).abs().mean())
    return (output - target).abs().mean(), edges


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # the SWD pyramid's kernel (cocosnet/metrics/swd.py)


def finest_band(x: Tensor) -> Tensor:
    """(B, C, H, W) -> its finest Laplacian band: the image minus its 5x5 binomial blur (reflect borders)."""
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x).expand(x.shape[1], 1, 5, 5)
    return x - F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def texture_term(output: Tensor, target: Tensor, generator: torch.Generator, *, patch: int = 7,
                 samples: int = 256, directions: int = 64) -> Tensor:
    """Sliced Wasserstein distance between the `patch` x `patch` neighbourhoods of the finest band of each
    output and of its target (`samples` random ones each, drawn independently, projected on `directions`
    random unit vectors, sorted), averaged over images and directions. It compares texture statistics, not
    aligned pixels, so it does not reward the average of uncertain candidates that L1 and the edge term
    reward: that average is what blurs the finest scales (docs/studies/generation.md, section 6)."""
    po, pt = F.unfold(finest_band(output), patch), F.unfold(finest_band(target), patch)  # (B, C*patch^2, L)
    dirs = torch.randn(po.shape[1], directions, generator=generator).to(po)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)

    def projected(p: Tensor) -> Tensor:
        idx = torch.randint(p.shape[-1], (samples,), generator=generator).to(p.device)
        return (p[..., idx].transpose(1, 2) @ dirs).sort(dim=1).values  # (B, samples, directions)

    return (projected(po) - projected(pt)).abs().mean()


def random_windows(size: tuple[int, int], patch: int, n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """n (top, left) corners of patch x patch windows drawn uniformly inside an image of `size` (H, W)."""
    h, w = size
    tops = torch.randint(h - patch + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(w - patch + 1, (n,), generator=generator).tolist()
    return list(zip(tops, lefts))


def crop_windows(x: Tensor, windows: list[tuple[int, int]], patch: int) -> Tensor:
    """(B, ..., H, W) -> (B, ..., patch, patch): sample i's window at windows[i]. The refiner is convolutional
    and sees 13-35 px, so windows of a crop teach it what the crop does at a fraction of the cost a step
    (refine.patch; docs/studies/generation.md, section 6)."""
    return torch.stack([x[i, ..., top:top + patch, left:left + patch] for i, (top, left) in enumerate(windows)])


def refine_pool(training: pd.DataFrame, cfg: RefineConfig) -> pd.DataFrame:
    """The stage's fixed pool: `cfg.pool` training rows drawn with `cfg.seed` (all of them when fewer)."""
    if cfg.pool >= len(training):
        return training.reset_index(drop=True)
    return training.sample(n=cfg.pool, random_state=cfg.seed).reset_index(drop=True)


class RefineTrainer:
    """Adam on `model.refiner` against the L1 to the target and to its edges (`refine.edge_weight`), plus
    the finest band's texture statistics (`refine.texture_weight`), the learning rate decaying linearly to 0
    over the run; the matcher and the generator stay frozen. A hard refiner trains soft for the first
    `refine.soft_steps`. With `refine.patch` each step sees a random window of each crop."""

    def __init__(self, model: CoCosNet, cfg: RefineConfig, *, device: torch.device, distributed: bool = False):
        if model.refiner is None:
            raise ValueError("the refine stage needs a refiner: set model.refiner.width > 0")
        self.model, self.cfg, self.device = model, cfg, device
        model.matcher.requires_grad_(False)
        model.generator.requires_grad_(False)
        self.net = DDP(model.refiner) if distributed else model.refiner
        self.opt = torch.optim.Adam(model.refiner.parameters(), lr=cfg.lr)
        self.cache: dict[int, tuple[Tensor, ...]] = {}  # pool index -> colours, scores, image (, offsets)
        self.pool: Dataset | None = None  # the pool's crops, indexed by (row, 0); set by the loop

    @torch.no_grad()
    def _fill(self, b: dict) -> None:
        """Run the frozen matcher and generator on the pool chunks holding the batch's uncached rows. The
        chunks are fixed (`batch_size` consecutive pool rows each): a row's result must not depend on
        which rows it was computed with, or a resumed run would differ from an uninterrupted one."""
        if self.pool is None:
            raise RuntimeError("RefineTrainer.pool is not set: give it the stage's pool dataset")
        size = self.cfg.batch_size
        for chunk in sorted({i // size for i in b["index"].tolist() if i not in self.cache}):
            rows = range(chunk * size, min((chunk + 1) * size, len(self.pool)))
            items = [self.pool[(r, 0)] for r in rows]
            c = {k: torch.stack([item[k] for item in items]).to(self.device) for k in ("label", "exemplar",
                                                                                        "exemplar_label", "index")}
            self.model.matcher.eval()
            self.model.generator.eval()
            gens = sample_generators(self.cfg.seed, 0, c["index"], self.device)
            corr = self.model.matcher(c["label"], c["exemplar"], c["exemplar_label"], generator=gens).correspondence
            image = self.model.generate(corr.warps, c["label"])
            colors, scores, offsets = refiner_inputs(c["exemplar"], corr.coords[-1], corr.scores[-1],
                                                     tuple(image.shape[-2:]))
            for n, index in enumerate(c["index"].tolist()):  # offsets only when read: float, more than the colours
                kept = (colors[n].half(), scores[n], image[n].half())
                self.cache[index] = kept + (offsets[n],) if self.model.refiner.offsets else kept

    def inputs(self, b: dict) -> tuple[Tensor, ...]:
        """The cached (colours, scores, generated image, offsets or None) of the batch's rows, in float."""
        self._fill(b)
        items = [self.cache[int(i)] for i in b["index"].tolist()]
        stacked = tuple(torch.stack([item[n] for item in items]).float() for n in range(len(items[0])))
        return stacked if len(stacked) == 4 else (*stacked, None)

    def step(self, batch: dict, step: int) -> dict[str, float]:
        b = {k: v.to(self.device) for k, v in batch.items()}
        colors, scores, image, offsets = self.inputs(b)
        label, target = b["label"], b["image"]
        if self.cfg.patch:  # drawn from (seed, step), so a resumed run draws the same windows
            windows = random_windows(tuple(target.shape[-2:]), self.cfg.patch, len(target),
                                     torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step + 500_009))
            colors, image, label, target = (crop_windows(t, windows, self.cfg.patch)
                                            for t in (colors, image, label, target))
            scores = crop_windows(scores.permute(0, 3, 1, 2), windows, self.cfg.patch).permute(0, 2, 3, 1)
            offsets = None if offsets is None else crop_windows(offsets, windows, self.cfg.patch)
        self.model.refiner.train()
        # unclamped: a clamped pixel would pass no gradient. A hard refiner first learns the soft re-weighting
        # (`soft_steps`), so that its hard choice starts from a learned ranking
        warm = "soft" if step <= self.cfg.soft_steps else None
        out = self.net(colors, scores, label, image, offsets, select=warm)
        l1, edges = refine_terms(out, target)
        loss = l1 + self.cfg.edge_weight * edges
        terms = {"refine_l1": l1.item(), "refine_edges": edges.item()}
        if self.cfg.texture_weight > 0:  # drawn from (seed, step), so a resumed run draws the same
            texture = texture_term(out, target, torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step))
            loss = loss + self.cfg.texture_weight * texture
            terms["refine_texture"] = texture.item()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step - 1, base=self.cfg.lr, total=self.cfg.steps, decay_start=0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.refiner.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return {**terms, "base_l1": (image - target).abs().mean().item()}

    @torch.no_grad()
    def sample(self, batch: dict, step: int) -> tuple[list[Tensor], Tensor | None]:
        b = {k: v.to(self.device) for k, v in batch.items()}
        gen = torch.Generator(device=self.device).manual_seed(step)
        out = self.model(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        return out.correspondence.warps, out.image

    def final_model(self) -> CoCosNet:
        return self.model

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
