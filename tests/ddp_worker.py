"""Run under torchrun: tiny pretraining, then save this rank's parameters."""

import sys
from pathlib import Path

import pandas as pd
import torch

from cocosnet.train.distributed import setup, teardown
from cocosnet.train.inputs import PRETRAIN
from cocosnet.train.loop import RunPaths, run_training
from tests.helpers import tiny_training_config

raw_root, processed, out = (Path(a) for a in sys.argv[1:4])
steps = int(sys.argv[4])
info = setup()
cfg = tiny_training_config(raw_root, processed, crop=32)
cfg = cfg.__class__(**{**cfg.__dict__, "pretrain": cfg.pretrain.__class__(
    **{**cfg.pretrain.__dict__, "steps": steps, "batch_size": 4})})
paths = RunPaths(ckpt_dir=out / f"ckpt-world{info.world}", out_model=out / f"model-world{info.world}.pt",
                 reports=out / "reports")
_, model = run_training(cfg, PRETRAIN, pd.read_parquet(processed / "pairs.parquet"), paths, info=info,
                        show_progress=False)
torch.save(model.state_dict(), out / f"params-world{info.world}-rank{info.rank}.pt")
teardown()
