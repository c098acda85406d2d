"""Two trainers, one per training stage, each built from its own config section.

* `CorrespondenceTrainer` (section `pretrain`): the matcher alone on the
  alignment, warp and cycle losses, one Adam at `lr`.
* `GanTrainer` (section `train`): explicit `generator_step` and
  `discriminator_step`; G (matcher + generator, Adam eps `g_eps`) at lr / 2 and
  D at 2 lr for the whole run (TTUR); an optional EMA of G.

Both expose `step(batch, step) -> metrics`, `sample(batch, step)` and
`state_dict()`, which is all the loop uses. One GradScaler per optimiser (the
official code shares one and updates it twice per iteration); autocast on CUDA
in bf16 or fp16, and on a CPU with native bf16 in bf16 (`train/precision.py`),
with the scalers active only for fp16. The trainers know nothing of MLflow:
they return metrics.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cocosnet.config import LossWeights, PretrainConfig, TrainConfig
from cocosnet.losses.objective import correspondence_terms, discriminator_terms, generator_terms
from cocosnet.losses.terms import weighted_total
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.precision import autocast, autocast_dtype
from cocosnet.train.schedule import lr_at, ttur

CORRESPONDENCE_KEYS = ("feat_align", "warp_self", "warp_cycle", "warp_geometry", "rank", "rank_truth", "flow_truth")


def sample_generators(seed: int, step: int, indices: Tensor, device: torch.device) -> list[torch.Generator]:
    """One PatchMatch generator per sample, seeded by (seed, step, dataset index):
    the random search is the same however the batch is split across ranks."""
    gens = []
    for index in indices.tolist():
        g = torch.Generator(device=device)
        g.manual_seed((seed * 1_000_003 + step * 10_007 + int(index)) % (2**63 - 1))
        gens.append(g)
    return gens


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema_p, p in zip(self.module.state_dict().values(), module.state_dict().values()):
            if ema_p.dtype.is_floating_point:
                ema_p.lerp_(p.detach(), 1 - self.decay)
            else:
                ema_p.copy_(p)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def ranking(model: CoCosNet, weights: dict[str, float], batch: dict) -> dict:
    """The ranking arguments of the objective: only the terms whose weight is on are computed (the
    batch carries the true matches when its dataset was asked for them, rank_truth or flow_truth > 0)."""
    rank, by_truth, flow = weights["rank"] > 0, weights["rank_truth"] > 0, weights["flow_truth"] > 0
    if not (rank or by_truth or flow):
        return {}
    c = model.config.correspondence
    return {"rank_temperature": c.temperature if rank or by_truth else None, "photometric": rank,
            "truth": (batch["truth"], batch["truth_valid"]) if by_truth or flow else None,
            "head_only": c.rank_grad == "head", "truth_rank": by_truth, "flow": flow}


def _optimise(loss: Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params,
              grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    scaler.step(opt)
    scaler.update()


class CorrespondenceTrainer:
    """Pretraining of `model.matcher`; the generator is left as initialised."""

    def __init__(self, model: CoCosNet, cfg: PretrainConfig, weights: LossWeights, *, device: torch.device,
                 distributed: bool = False):
        self.model, self.cfg, self.device = model, cfg, device
        self.weights = {k: v for k, v in asdict(weights).items() if k in CORRESPONDENCE_KEYS}
        self.net = DDP(model.matcher) if distributed else model.matcher
        self.opt = torch.optim.Adam(model.matcher.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.amp_dtype = autocast_dtype(device, amp=cfg.amp, amp_dtype=cfg.amp_dtype, amp_cpu=cfg.amp_cpu)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)

    def step(self, batch: dict, step: int) -> dict[str, float]:
        """Alignment + warp + cycle losses on the matcher."""
        b = _to_device(batch, self.device)
        gens = sample_generators(self.cfg.seed, step, b["index"], self.device)
        with autocast(self.device, self.amp_dtype):
            out = self.net(b["label"], b["exemplar"], b["exemplar_label"], real=b["image"], cycle=True,
                           geometry_warp=self.weights["warp_geometry"] > 0, generator=gens)
            terms = correspondence_terms(out, real=b["image"], exemplar=b["exemplar"], self_ref=b["self_ref"],
                                         **ranking(self.model, self.weights, b))
            loss = weighted_total(terms, self.weights)
        _optimise(loss, self.opt, self.scaler, self.model.matcher.parameters(), 0.0)
        return {**{k: v.item() for k, v in terms.items()}, "loss": loss.item()}

    @torch.no_grad()
    def sample(self, batch: dict, step: int) -> tuple[list[Tensor], Tensor | None]:
        """(warps, None) of the matcher in eval mode, for a sample grid."""
        b = _to_device(batch, self.device)
        gen = torch.Generator(device=self.device).manual_seed(step)
        out = self.model.matcher(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        return out.correspondence.warps, None

    def final_model(self) -> CoCosNet:
        return self.model

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])


class GanTrainer:
    """G = matcher + generator against a multiscale D, with the VGG19 losses."""

    def __init__(self, model: CoCosNet, disc: nn.Module, vgg: nn.Module, cfg: TrainConfig, weights: LossWeights, *,
                 device: torch.device, distributed: bool = False):
        self.model, self.disc, self.vgg, self.cfg, self.device = model, disc, vgg, cfg, device
        self.weights = asdict(weights)
        self.amp_dtype = autocast_dtype(device, amp=cfg.amp, amp_dtype=cfg.amp_dtype, amp_cpu=cfg.amp_cpu)
        fp16 = self.amp_dtype is torch.float16
        self.net = DDP(model) if distributed else model
        self.d_net = DDP(disc) if distributed else disc
        g_lr, d_lr = ttur(cfg.lr)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(model.parameters(), lr=g_lr, betas=betas, eps=cfg.g_eps)
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=d_lr, betas=betas)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def set_lr(self, lr: float) -> None:
        g_lr, d_lr = ttur(lr)
        for group in self.opt_g.param_groups:
            group["lr"] = g_lr
        for group in self.opt_d.param_groups:
            group["lr"] = d_lr

    def reset_ema(self) -> None:
        """Start the average from the current weights (after initialising from the pretrain model)."""
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())

    def step(self, batch: dict, step: int) -> dict[str, float]:
        self.set_lr(lr_at(step - 1, base=self.cfg.lr, total=self.cfg.steps, decay_start=self.cfg.decay_start))
        metrics, fake = self.generator_step(batch, step)
        metrics.update(self.discriminator_step(batch, fake))
        return metrics

    def generator_step(self, batch: dict, step: int) -> tuple[dict[str, float], Tensor]:
        """All generator-side losses; returns the metrics and the (detached) fake for the D step."""
        b = _to_device(batch, self.device)
        gens = sample_generators(self.cfg.seed, step, b["index"], self.device)
        self.disc.requires_grad_(False)
        with self._autocast():
            out = self.net(b["label"], b["exemplar"], b["exemplar_label"], real=b["image"], cycle=True,
                           geometry_warp=self.weights["warp_geometry"] > 0, generator=gens)
            terms = generator_terms(out, label=b["label"], real=b["image"], exemplar=b["exemplar"],
                                    self_ref=b["self_ref"], disc=self.disc, vgg=self.vgg,
                                    **ranking(self.model, self.weights, b))
            loss = weighted_total(terms, self.weights)
        self.disc.requires_grad_(True)
        _optimise(loss, self.opt_g, self.scaler_g, self.model.parameters(), self.cfg.grad_clip)
        if self.ema is not None:
            self.ema.update(self.model)
        return {**{k: v.item() for k, v in terms.items()}, "loss_g": loss.item()}, out.image.detach()

    def discriminator_step(self, batch: dict, fake: Tensor) -> dict[str, float]:
        b = _to_device(batch, self.device)
        with self._autocast():
            terms = discriminator_terms(fake, label=b["label"], real=b["image"], disc=self.d_net)
            loss = self.weights["gan"] * terms["gan"]
        _optimise(loss, self.opt_d, self.scaler_d, self.disc.parameters(), self.cfg.grad_clip)
        return {"loss_d": loss.item()}

    @torch.no_grad()
    def sample(self, batch: dict, step: int) -> tuple[list[Tensor], Tensor | None]:
        b = _to_device(batch, self.device)
        gen = torch.Generator(device=self.device).manual_seed(step)
        out = self.model(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        return out.correspondence.warps, out.image

    def final_model(self) -> CoCosNet:
        """With an EMA of G, the averaged weights are the model that is evaluated."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        state = {"disc": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                 "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
