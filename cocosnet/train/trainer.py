"""Explicit training steps: `correspondence_step` (pretraining), `generator_step`, `discriminator_step`.

One GradScaler per optimiser (the official code shares one and updates it
twice per iteration). Autocast only on CUDA, in bf16 or fp16; the scalers are
active only for fp16. The trainer knows nothing of MLflow: it returns metrics.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cocosnet.losses.objective import correspondence_terms, discriminator_terms, generator_terms
from cocosnet.losses.terms import weighted_total
from cocosnet.models.cocosnet import CoCosNet
from cocosnet.train.schedule import ttur

CORRESPONDENCE_KEYS = ("feat_align", "warp_self", "warp_cycle")


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


class Trainer:
    """Holds the networks, optimisers and scalers of one stage.

    pretrain=True trains the matcher alone on the correspondence losses;
    otherwise G (matcher + generator, Adam eps g_eps, lr/2) and D (2 lr).
    """

    def __init__(self, model: CoCosNet, *, weights: dict[str, float], lr: float, betas: tuple[float, float],
                 device: torch.device, pretrain: bool, disc: nn.Module | None = None, vgg: nn.Module | None = None,
                 g_eps: float = 1e-8, grad_clip: float = 0.0, ema_decay: float = 0.0, amp: bool = False,
                 amp_dtype: str = "bfloat16", distributed: bool = False, seed: int = 0):
        self.model, self.disc, self.vgg = model, disc, vgg
        self.weights, self.device, self.pretrain = weights, device, pretrain
        self.grad_clip, self.seed = grad_clip, seed
        self.amp_dtype = getattr(torch, amp_dtype) if (amp and device.type == "cuda") else None
        fp16 = self.amp_dtype is torch.float16
        if pretrain:
            self.net = DDP(model.matcher) if distributed else model.matcher
            self.opt_g = torch.optim.Adam(model.matcher.parameters(), lr=lr, betas=betas)
            self.opt_d = None
        else:
            if disc is None or vgg is None:
                raise ValueError("GAN training needs a discriminator and a VGG19")
            self.net = DDP(model) if distributed else model
            self.d_net = DDP(disc) if distributed else disc
            g_lr, d_lr = ttur(lr)
            self.opt_g = torch.optim.Adam(model.parameters(), lr=g_lr, betas=betas, eps=g_eps)
            self.opt_d = torch.optim.Adam(disc.parameters(), lr=d_lr, betas=betas)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        self.ema = EMA(model, ema_decay) if ema_decay > 0 and not pretrain else None

    def set_lr(self, lr: float) -> None:
        g_lr, d_lr = (lr, lr) if self.pretrain else ttur(lr)
        for group in self.opt_g.param_groups:
            group["lr"] = g_lr
        if self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = d_lr

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _step(self, loss: Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              params) -> float:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        norm = 0.0
        if self.grad_clip > 0:
            scaler.unscale_(opt)
            norm = float(torch.nn.utils.clip_grad_norm_(list(params), self.grad_clip))
        scaler.step(opt)
        scaler.update()
        return norm

    def correspondence_step(self, batch: dict, step: int) -> dict[str, float]:
        """Pretraining: alignment + warp + cycle losses on the matcher."""
        b = self._to_device(batch)
        gens = sample_generators(self.seed, step, b["index"], self.device)
        with self._autocast():
            out = self.net(b["label"], b["exemplar"], b["exemplar_label"], real=b["image"], cycle=True,
                           generator=gens)
            terms = correspondence_terms(out, real=b["image"], exemplar=b["exemplar"], self_ref=b["self_ref"])
            loss = weighted_total(terms, self.weights)
        self._step(loss, self.opt_g, self.scaler_g, self.model.matcher.parameters())
        return {**{k: v.item() for k, v in terms.items()}, "loss": loss.item()}

    def generator_step(self, batch: dict, step: int) -> tuple[dict[str, float], Tensor]:
        """All generator-side losses; returns the metrics and the (detached) fake for the D step."""
        b = self._to_device(batch)
        gens = sample_generators(self.seed, step, b["index"], self.device)
        self.disc.requires_grad_(False)
        with self._autocast():
            out = self.net(b["label"], b["exemplar"], b["exemplar_label"], real=b["image"], cycle=True,
                           generator=gens)
            terms = generator_terms(out, label=b["label"], real=b["image"], exemplar=b["exemplar"],
                                    self_ref=b["self_ref"], disc=self.disc, vgg=self.vgg)
            loss = weighted_total(terms, self.weights)
        self.disc.requires_grad_(True)
        self._step(loss, self.opt_g, self.scaler_g, self.model.parameters())
        if self.ema is not None:
            self.ema.update(self.model)
        return {**{k: v.item() for k, v in terms.items()}, "loss_g": loss.item()}, out.image.detach()

    def discriminator_step(self, batch: dict, fake: Tensor) -> dict[str, float]:
        b = self._to_device(batch)
        with self._autocast():
            terms = discriminator_terms(fake, label=b["label"], real=b["image"], disc=self.d_net)
            loss = self.weights["gan"] * terms["gan"]
        self._step(loss, self.opt_d, self.scaler_d, self.disc.parameters())
        return {"loss_d": loss.item()}

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "opt_g": self.opt_g.state_dict(),
                 "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict()}
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
        if self.opt_d is not None:
            state["opt_d"] = self.opt_d.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
