"""The step-based loop shared by the `pretrain` and `train` stages: build, resume, data, loop.

A run resumes the newest good checkpoint trained from the same inputs
(`resume.py`); on CPU with a fixed seed a killed run ends at the same weights
as an uninterrupted one, since batches, crops and the PatchMatch random search
all derive from (seed, step, index). Logging goes through a callback, so MLflow
stays out of here.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from cocosnet.config import Config, PretrainConfig, RefineConfig, TrainConfig, uses_truth
from cocosnet.data.dataset import PairDataset
from cocosnet.io import atomic_save, atomic_write
from cocosnet.losses.vgg import load_vgg19
from cocosnet.models.cocosnet import CoCosNet, build_discriminator
from cocosnet.progress import progress
from cocosnet.train.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    matcher_weights,
    prune,
    refinable_weights,
    save_checkpoint,
    save_model,
)
from cocosnet.train.distributed import DistInfo, StepBatches
from cocosnet.train.inputs import StageSpec, code_differences, stage_config, training_inputs, training_pairs
from cocosnet.train.refine import RefineTrainer, refine_pool
from cocosnet.train.resume import choose_resume
from cocosnet.train.samples import sample_grid
from cocosnet.train.trainer import CorrespondenceTrainer, GanTrainer

Log = Callable[[dict[str, float], int], None]
Artifact = Callable[[Path, str], None]
Tag = Callable[[dict[str, str]], None]
Trainer = CorrespondenceTrainer | GanTrainer | RefineTrainer


@dataclass(frozen=True)
class RunPaths:
    ckpt_dir: Path  # checkpoints/<stage>/
    out_model: Path  # models/<stage>.pt
    reports: Path  # reports/<stage>/: losses.tsv, losses.png, samples/
    init: Path | None = None  # the model file this stage starts from (train: models/pretrain.pt)


def section_of(cfg: Config, spec: StageSpec) -> PretrainConfig | TrainConfig | RefineConfig:
    return getattr(cfg, spec.name)


def build(cfg: Config, spec: StageSpec, device: torch.device, *, distributed: bool) -> Trainer:
    """The model and the trainer of `spec`'s type, seeded by its section."""
    section = section_of(cfg, spec)
    torch.manual_seed(section.seed)
    model = CoCosNet.from_config(cfg).to(device)
    if isinstance(section, PretrainConfig):
        return CorrespondenceTrainer(model, section, cfg.loss_weights, device=device, distributed=distributed)
    if isinstance(section, RefineConfig):
        return RefineTrainer(model, section, device=device, distributed=distributed)
    disc = build_discriminator(cfg).to(device)
    vgg = load_vgg19(cfg.vgg.weights).to(device)
    return GanTrainer(model, disc, vgg, section, cfg.loss_weights, device=device, distributed=distributed)


def resume(trainer: Trainer, cfg: Config, spec: StageSpec, inputs: dict, paths: RunPaths, info: DistInfo,
           across_code_change: bool = False) -> tuple[int, list[dict], dict[int, torch.Tensor], list[dict]]:
    """Load the checkpoint to resume, or initialise from `paths.init`; returns (start step, history, the
    sample grids written so far as PNG bytes in uint8 tensors by step, the code changes resumed across:
    [{"step", "files"}])."""
    steps = section_of(cfg, spec).steps
    state = (choose_resume(paths.ckpt_dir, inputs, stage=spec.name, max_step=steps,
                           across_code_change=across_code_change) if info.is_main else None)
    if info.world > 1:
        dist.barrier()  # the main rank has moved superseded or corrupt checkpoints out of the way
        if not info.is_main and list_checkpoints(paths.ckpt_dir):
            state = load_checkpoint(list_checkpoints(paths.ckpt_dir)[-1])
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        changes = list(state.get("code_changes", []))
        changed = code_differences(state.get("inputs", {}), inputs)
        if changed:
            changes.append({"step": int(state["step"]), "files": changed})
        return int(state["step"]), list(state["history"]), dict(state.get("samples", {})), changes
    if paths.init is not None:
        init = load_checkpoint(paths.init)
        if init.get("stage") == "pretrain":  # the matcher only: its generator is untrained
            trainer.model.matcher.load_state_dict(matcher_weights(init, cfg, paths.init))
        else:  # a trained or imported model: the matcher and the generator; the refiner starts afresh
            missing, unexpected = trainer.model.load_state_dict(refinable_weights(init, cfg, paths.init), strict=False)
            assert not unexpected and all(k.startswith("refiner.") for k in missing), (missing, unexpected)
        if isinstance(trainer, GanTrainer):
            trainer.reset_ema()
    return 0, [], {}, []


def training_dataset(cfg: Config, spec: StageSpec, pairs: pd.DataFrame) -> PairDataset:
    """The stage's training pairs (the refine stage: its pool) as random crops, indexed by (row, epoch)."""
    section = section_of(cfg, spec)
    flip = section.flip if isinstance(section, TrainConfig) else False
    table = refine_pool(training_pairs(pairs), section) if isinstance(section, RefineConfig) else training_pairs(pairs)
    return PairDataset(table, Path(cfg.data.processed), load_size=cfg.data.load_size,
                       crop_size=cfg.data.crop_size, random_crop=True, flip=flip, seed=section.seed,
                       truth_root=Path(cfg.data.root) if uses_truth(cfg.loss_weights) else None)


def batches(cfg: Config, spec: StageSpec, pairs: pd.DataFrame, info: DistInfo, start: int) -> DataLoader:
    """The batches of steps start+1 .. steps, each the same whatever the start or the world size."""
    section = section_of(cfg, spec)
    pool = isinstance(section, RefineConfig)  # a fixed pool of crops, each drawn the same at every epoch
    dataset = training_dataset(cfg, spec, pairs)
    steps = StepBatches(len(dataset), section.batch_size, info, section.seed)

    def keys(step: int) -> list[tuple[int, int]]:
        epoch, idx = steps(step)
        return [(i, 0 if pool else epoch) for i in idx]

    return DataLoader(dataset, batch_sampler=[keys(s) for s in range(start, section.steps)],
                      num_workers=section.workers, persistent_workers=False)


def run_training(cfg: Config, spec: StageSpec, pairs: pd.DataFrame, paths: RunPaths, *, info: DistInfo,
                 log: Log | None = None, artifact: Artifact | None = None, tag: Tag | None = None,
                 show_progress: bool = True, across_code_change: bool = False) -> tuple[dict[str, float], CoCosNet]:
    """Train `spec` to its step count; returns the last metrics and the model written to `paths.out_model`.
    `across_code_change` resumes a checkpoint trained by other code (same params, data and files); the
    crossing is kept in the checkpoints (`code_changes`) and given to `tag`."""
    cfg = stage_config(cfg, spec)
    section = section_of(cfg, spec)
    files = {"init": paths.init}
    if isinstance(section, TrainConfig) and cfg.vgg.weights != "random":
        files["vgg"] = Path(cfg.vgg.weights)
    inputs = training_inputs(cfg, spec, pairs, files=files)
    if isinstance(section, RefineConfig) and (section.steps == 0 or cfg.model.refiner.width == 0):
        return {}, _unrefined(cfg, spec, pairs, paths, inputs, info)
    trainer = build(cfg, spec, info.device, distributed=info.world > 1)
    if isinstance(trainer, RefineTrainer):
        trainer.pool = training_dataset(cfg, spec, pairs)
    start, history, samples, code_changes = resume(trainer, cfg, spec, inputs, paths, info, across_code_change)
    if info.is_main:
        _restore_samples(samples, start, spec.name, paths.reports, artifact)
        if code_changes and tag:
            tag({"resumed_across_code_change": "; ".join(f"step {c['step']}: {', '.join(c['files'])}"
                                                         for c in code_changes)[:5000]})
    loader = batches(cfg, spec, pairs, info, start)
    config = asdict(cfg)
    metrics: dict[str, float] = {}
    trainer.model.train()
    for step, batch in progress(zip(range(start + 1, section.steps + 1), loader), total=section.steps - start,
                                desc=spec.name, enabled=show_progress and info.is_main):
        metrics = trainer.step(batch, step)
        if not info.is_main:
            continue
        last = step == section.steps
        if step % section.log_every == 0 or last:
            history.append({"step": step, **metrics})
            if log:
                log(metrics, step)
        if step % section.sample_every == 0 or last:
            samples[step] = _save_samples(trainer, batch, step, spec.name, paths.reports, artifact)
        if step % section.checkpoint_every == 0 or last:
            save_checkpoint(checkpoint_path(paths.ckpt_dir, step), {
                "stage": spec.name, "step": step, "config": config, "inputs": inputs,
                "model": trainer.model.state_dict(), "trainer": trainer.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": history, "samples": samples,
                "code_changes": code_changes})
            prune(paths.ckpt_dir, section.keep_last)
    if start == section.steps:
        warnings.warn(f"{spec.name}: the checkpoint in {paths.ckpt_dir} is at step {section.steps}, the step count "
                      "asked for, with these inputs; writing its model", stacklevel=2)
        if info.is_main and section.steps not in samples:  # a checkpoint from before grids were kept in it
            last = next(iter(batches(cfg, spec, pairs, info, section.steps - 1)))
            _save_samples(trainer, last, section.steps, spec.name, paths.reports, artifact)
    final = trainer.final_model()
    if info.is_main:
        save_model(paths.out_model, final, config=config, stage=spec.name, step=section.steps, inputs=inputs)
        write_history(history, paths.reports)
    return metrics, final


def _unrefined(cfg: Config, spec: StageSpec, pairs: pd.DataFrame, paths: RunPaths, inputs: dict,
               info: DistInfo) -> CoCosNet:
    """The refine stage with no refinement asked for (`refine.steps` 0 or `model.refiner.width` 0): the
    starting model written as the stage's model (an untrained refiner returns its input), with an empty
    loss table and the grid of one pool batch, so the stage's outputs exist as after training."""
    model = CoCosNet.from_config(cfg).to(info.device).eval()
    model.load_state_dict(refinable_weights(load_checkpoint(paths.init), cfg, paths.init), strict=False)
    if info.is_main:
        save_model(paths.out_model, model, config=asdict(cfg), stage=spec.name, step=0, inputs=inputs)
        atomic_write(paths.reports / "losses.tsv", "step\n")
        _note_png(paths.reports / "losses.png", f"{spec.name}: no refinement (refine.steps "
                  f"{section_of(cfg, spec).steps}, model.refiner.width {cfg.model.refiner.width})")
        dataset = training_dataset(cfg, spec, pairs)
        first = DataLoader(dataset, batch_sampler=[[(i, 0) for i in range(min(4, len(dataset)))]])
        batch = {k: v.to(info.device) for k, v in next(iter(first)).items()}
        with torch.no_grad():
            out = model(batch["label"], batch["exemplar"], batch["exemplar_label"],
                        generator=torch.Generator(device=info.device).manual_seed(0))
        buf = io.BytesIO()
        sample_grid(batch, out.correspondence.warps, out.image).save(buf, format="PNG")
        atomic_write(_sample_path(paths.reports, 0), buf.getvalue())
    return model


def _note_png(path: Path, text: str) -> None:
    """A small PNG that says `text`, where a plot of no data would be."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=8)
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _sample_path(reports: Path, step: int) -> Path:
    return reports / "samples" / f"step-{step:06d}.png"


def _restore_samples(samples: dict[int, torch.Tensor], start: int, stage: str, reports: Path,
                     artifact: Artifact | None) -> None:
    """Make `reports/samples` hold this run's grids up to `start`: those its checkpoint kept are written
    back (DVC removes a stage's outputs before it reruns), and those of later steps, left by a longer
    run, are removed (this run draws its own)."""
    folder = reports / "samples"
    for path in sorted(folder.glob("step-*.png")) if folder.is_dir() else []:
        if path.stem[5:].isdigit() and int(path.stem[5:]) > start:
            path.unlink()
    for step, png in sorted(samples.items()):
        if step <= start:
            atomic_write(_sample_path(reports, step), png.numpy().tobytes())
            if artifact:
                artifact(_sample_path(reports, step), f"samples/{stage}")


def _save_samples(trainer: Trainer, batch: dict, step: int, stage: str, reports: Path,
                  artifact: Artifact | None) -> torch.Tensor:
    """Draw and write the sample grid of `step`; returns its PNG bytes as a uint8 tensor (for the checkpoint)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    warps, image = trainer.sample(batch, step)
    model.train(was_training)
    grid = sample_grid({k: v.to(trainer.device) for k, v in batch.items()}, warps, image)
    path = _sample_path(reports, step)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
    if artifact:
        artifact(path, f"samples/{stage}")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def write_history(history: list[dict], reports: Path) -> None:
    """Loss curves as TSV (dvc plots) and a PNG that opens offline."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, delimiter="\t")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(reports / "losses.tsv", buf.getvalue())
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
    atomic_save(reports / "losses.png", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
