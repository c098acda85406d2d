"""Stage `train`: the full GAN, initialised from models/pretrain.pt (its matcher), or with --init from any
model file of this project: a pretrain model gives the matcher, any other (a trained or an imported
official model, `cocosnet import-official`) gives the matcher and the generator.

Resumes from checkpoints/train/ after an interruption (only a checkpoint trained
from this very models/pretrain.pt, data and params). Works under torchrun (DDP).
"""

from __future__ import annotations

from pathlib import Path

from cocosnet.train.inputs import TRAIN
from cocosnet.train.loop import RunPaths
from stages.common import run_stage
from stages.training import add_resume_flag, train_stage


def main(cfg, args) -> None:
    train_stage(cfg, TRAIN, RunPaths(ckpt_dir=Path(args.checkpoints), out_model=Path(args.out),
                                     reports=Path(args.reports), init=Path(args.init)),
                across_code_change=args.resume_across_code_change)


def add_args(parser) -> None:
    parser.add_argument("--init", default="models/pretrain.pt", help="the model file training starts from")
    parser.add_argument("--checkpoints", default="checkpoints/train", help="checkpoint folder")
    parser.add_argument("--out", default="models/train.pt", help="the model file written at the end")
    parser.add_argument("--reports", default="reports/train", help="losses.tsv, losses.png, samples/")
    add_resume_flag(parser)


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
