"""Stage `pretrain`: the correspondence network alone (alignment, warp and cycle losses).

Resumes from its checkpoint folder after an interruption. Works under
`torchrun --nproc_per_node=N -m stages.pretrain` (DDP). The folders are flags so
that the correspondence study (study/dvc.yaml) runs the same stage beside the demo's.
"""

from __future__ import annotations

from pathlib import Path

from cocosnet.train.inputs import PRETRAIN
from cocosnet.train.loop import RunPaths
from stages.common import run_stage
from stages.training import add_resume_flag, train_stage


def main(cfg, args) -> None:
    train_stage(cfg, PRETRAIN, RunPaths(ckpt_dir=Path(args.checkpoints), out_model=Path(args.out),
                                        reports=Path(args.reports)),
                across_code_change=args.resume_across_code_change)


def add_args(parser) -> None:
    parser.add_argument("--checkpoints", default="checkpoints/pretrain", help="checkpoint folder")
    parser.add_argument("--out", default="models/pretrain.pt", help="the model file written at the end")
    parser.add_argument("--reports", default="reports/pretrain", help="losses.tsv, losses.png, samples/")
    add_resume_flag(parser)


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
