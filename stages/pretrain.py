"""Stage `pretrain`: the correspondence network alone (alignment, warp and cycle losses).

Resumes from checkpoints/pretrain/ after an interruption. Works under
`torchrun --nproc_per_node=N -m stages.pretrain` (DDP).
"""

from __future__ import annotations

from pathlib import Path

from cocosnet.train.inputs import PRETRAIN
from cocosnet.train.loop import RunPaths
from stages.common import run_stage
from stages.training import train_stage


def main(cfg, args) -> None:
    train_stage(cfg, PRETRAIN, RunPaths(ckpt_dir=Path("checkpoints/pretrain"), out_model=Path("models/pretrain.pt"),
                                        reports=Path("reports/pretrain")))


if __name__ == "__main__":
    run_stage(__doc__, main)
