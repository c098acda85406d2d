"""The step-based loop shared by the `pretrain` and `train` stages.

Resumes from the newest checkpoint in `ckpt_dir` when its config is
compatible (on CPU with a fixed seed a killed run ends at the same weights as
an uninterrupted one: batches, crops and the PatchMatch random search all
derive from (seed, step, index)); otherwise it says which keys differ and
starts afresh. Logging goes through a callback, so MLflow stays out of here.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cocosnet.config import Config
from cocosnet.data.dataset import PairDataset
from cocosnet.io import atomic_write_bytes, atomic_write_text
from cocosnet.losses.vgg import load_vgg19
from cocosnet.models.cocosnet import CoCosNet, build_discriminator
from cocosnet.progress import progress
from cocosnet.train.checkpoint import (CheckpointMismatch, check_compatible, code_version, list_checkpoints,
                                       load_checkpoint, save_checkpoint)
from cocosnet.train.distributed import DistInfo, StepBatches
from cocosnet.train.samples import sample_grid
from cocosnet.train.schedule import lr_at
from cocosnet.train.trainer import CORRESPONDENCE_KEYS, Trainer

Log = Callable[[dict[str, float], int], None]
Artifact = Callable[[Path, str], None]
# What must match for a checkpoint to be resumed (besides the stage's own section).
SHARED_SECTIONS = ("model", "loss_weights", "vgg", "data")


def training_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Train-split self pairs: the paired setting the official README trains in."""
    return pairs[(pairs["split"] == "train") & (pairs["kind"] == "self")].reset_index(drop=True)


def save_model(path: Path, model: CoCosNet, cfg: Config, step: int, stage: str) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "step": step, "stage": stage,
                "code_version": code_version()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model(path: Path, cfg: Config, *, sections: tuple[str, ...] = ("model",)) -> tuple[CoCosNet, dict]:
    """A CoCosNet from a final model file; refuses one built with different `sections`."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, asdict(cfg), sections, path)
    model = CoCosNet.from_config(cfg)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def run_training(cfg: Config, stage: str, pairs: pd.DataFrame, *, ckpt_dir: Path, out_model: Path,
                 reports: Path, info: DistInfo, init: Path | None = None, log: Log | None = None,
                 artifact: Artifact | None = None, show_progress: bool = True) -> tuple[dict[str, float], CoCosNet]:
    """Train `stage` ('pretrain' or 'train') to its step count; returns the last metrics and the model."""
    section = cfg.pretrain if stage == "pretrain" else cfg.train
    pretrain = stage == "pretrain"
    torch.manual_seed(section.seed)
    model = CoCosNet.from_config(cfg).to(info.device)
    disc = vgg = None
    if not pretrain:
        disc = build_discriminator(cfg).to(info.device)
        vgg = load_vgg19(cfg.vgg.weights).to(info.device)
    weights = asdict(cfg.loss_weights)
    if pretrain:
        weights = {k: v for k, v in weights.items() if k in CORRESPONDENCE_KEYS}
    trainer = Trainer(
        model, weights=weights, lr=section.lr, betas=(section.beta1, section.beta2), device=info.device,
        pretrain=pretrain, disc=disc, vgg=vgg, g_eps=getattr(section, "g_eps", 1e-8),
        grad_clip=getattr(section, "grad_clip", 0.0), ema_decay=getattr(section, "ema_decay", 0.0),
        amp=getattr(section, "amp", False), amp_dtype=getattr(section, "amp_dtype", "bfloat16"),
        distributed=info.world > 1, seed=section.seed)

    start = 0
    history: list[dict] = []
    current = asdict(cfg)
    ckpts = list_checkpoints(ckpt_dir)
    if ckpts:
        state = load_checkpoint(ckpts[-1])
        try:
            check_compatible(state, current, SHARED_SECTIONS + (stage,), ckpts[-1])
        except CheckpointMismatch as exc:
            warnings.warn(f"{exc}; starting {stage} afresh", stacklevel=2)
            if info.is_main:
                for old in ckpts:
                    old.unlink()
        else:
            trainer.load_state_dict(state)
            torch.set_rng_state(state["torch_rng"])
            start, history = int(state["step"]), list(state["history"])
    if start == 0 and init is not None:
        model_init, _ = load_model(init, cfg)
        model.matcher.load_state_dict(model_init.matcher.state_dict())
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(model.state_dict())  # average from the initialised weights

    dataset = PairDataset(training_pairs(pairs), Path(cfg.data.processed), load_size=cfg.data.load_size,
                          crop_size=cfg.data.crop_size, random_crop=True, flip=getattr(section, "flip", False),
                          seed=section.seed)
    batches = StepBatches(len(dataset), section.batch_size, info, section.seed)

    def keys(step: int) -> list[tuple[int, int]]:
        epoch, idx = batches(step)
        return [(i, epoch) for i in idx]

    loader = DataLoader(dataset, batch_sampler=[keys(s) for s in range(start, section.steps)],
                        num_workers=section.workers, persistent_workers=False)
    metrics: dict[str, float] = {}
    model.train()
    for step, batch in progress(zip(range(start + 1, section.steps + 1), loader), total=section.steps - start,
                                desc=stage, enabled=show_progress and info.is_main):
        if not pretrain:
            trainer.set_lr(lr_at(step - 1, base=section.lr, total=section.steps, decay_start=section.decay_start))
            metrics, fake = trainer.generator_step(batch, step)
            metrics.update(trainer.discriminator_step(batch, fake))
        else:
            metrics = trainer.correspondence_step(batch, step)
        if info.is_main and (step % section.log_every == 0 or step == section.steps):
            history.append({"step": step, **metrics})
            if log:
                log(metrics, step)
        if info.is_main and (step % section.sample_every == 0 or step == section.steps):
            _save_samples(model, batch, step, stage, reports, trainer, artifact)
        if info.is_main and (step % section.checkpoint_every == 0 or step == section.steps):
            save_checkpoint(ckpt_dir, step, {**trainer.state_dict(), "config": current, "stage": stage,
                                             "torch_rng": torch.get_rng_state(), "history": history},
                            keep_last=section.keep_last)
    if info.is_main:
        # With an EMA of G, the averaged weights are the model that is evaluated.
        save_model(out_model, trainer.ema.module if trainer.ema is not None else model, cfg, section.steps, stage)
        write_history(history, reports)
    return metrics, model


@torch.no_grad()
def _save_samples(model: CoCosNet, batch: dict, step: int, stage: str, reports: Path, trainer: Trainer,
                  artifact: Artifact | None) -> None:
    was_training = model.training
    model.eval()
    b = trainer._to_device(batch)
    gen = torch.Generator(device=trainer.device).manual_seed(step)
    if stage == "pretrain":
        out, image = model.matcher(b["label"], b["exemplar"], b["exemplar_label"], generator=gen), None
    else:
        out = model(b["label"], b["exemplar"], b["exemplar_label"], generator=gen)
        image = out.image
    grid = sample_grid(b, out.correspondence.warps, image)
    path = reports / "samples" / f"step-{step:06d}.png"
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    if artifact:
        artifact(path, f"samples/{stage}")
    model.train(was_training)


def write_history(history: list[dict], reports: Path) -> None:
    """Loss curves as TSV (dvc plots) and a PNG that opens offline."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, delimiter="\t")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(reports / "losses.tsv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    terms = [k for k in keys if k != "step"]
    fig, axes = plt.subplots(1, len(terms), figsize=(2.6 * len(terms), 2.4), squeeze=False)
    for ax, key in zip(axes[0], terms):
        ax.plot(frame["step"], frame[key])
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(reports / "losses.png", png.getvalue())
