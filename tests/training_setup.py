"""A tiny training setup on the tiny synthetic set, shared by the training tests and the DDP worker."""

import argparse
from pathlib import Path

import torch

from cocosnet.config import config_from_dict, read_yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_training_config(raw_root: Path, processed: Path, crop: int = 64, **train_overrides):
    """crop 64 for GAN training (the 4-layer discriminator needs it); 32 is enough for pretraining."""
    raw = read_yaml(ROOT / "params.yaml")
    raw["data"].update(root=str(raw_root), processed=str(processed), load_size=72, crop_size=crop, workers=1)
    raw["model"]["align"].update(widths=[16, 16, 8, 8], match_channels=8, spade_hidden=8)
    raw["model"]["correspondence"].update(num_candidates=4, iters=2, gru_hidden=8)
    raw["model"]["generator"].update(ngf=8, head_width=16, spade_hidden=8)
    raw["model"]["discriminator"].update(ndf=8)
    for section in ("pretrain", "train"):
        raw[section].update(steps=4, batch_size=2, checkpoint_every=1, keep_last=2, log_every=1,
                            sample_every=2, workers=0, seed=5)
    raw["train"].update(train_overrides)
    raw["eval"].update(max_pairs=4, batch_size=2)
    return config_from_dict(raw)


def prepare_data(raw_root: Path, processed: Path) -> None:
    from stages import build_pairs, prepare, render_keypoints

    cfg = tiny_training_config(raw_root, processed)
    args = argparse.Namespace(reports=str(processed / "reports"))
    for stage in (prepare, render_keypoints, build_pairs):
        stage.main(cfg, args)


def state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


