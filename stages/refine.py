"""Stage `refine`: the refiner (cocosnet/models/refiner.py) trained alone on the frozen matcher and
generator of models/train.pt, on a fixed pool of training crops (cocosnet/train/refine.py). Writes
models/refine.pt, the model the evaluate stage scores. With `refine.steps` 0 or `model.refiner.width` 0
it writes the GAN stage's model unchanged (the official behaviour).

Resumes from checkpoints/refine/ after an interruption (only a checkpoint trained from this very
models/train.pt, data and params).
"""

from __future__ import annotations

from pathlib import Path

from cocosnet.train.inputs import REFINE
from cocosnet.train.loop import RunPaths
from stages.common import run_stage
from stages.training import add_resume_flag, train_stage


def main(cfg, args) -> None:
    train_stage(cfg, REFINE, RunPaths(ckpt_dir=Path(args.checkpoints), out_model=Path(args.out),
                                      reports=Path(args.reports), init=Path(args.init)),
                across_code_change=args.resume_across_code_change)


def add_args(parser) -> None:
    parser.add_argument("--init", default="models/train.pt", help="the trained model whose refiner is trained")
    parser.add_argument("--checkpoints", default="checkpoints/refine", help="checkpoint folder")
    parser.add_argument("--out", default="models/refine.pt", help="the model file written at the end")
    parser.add_argument("--reports", default="reports/refine", help="losses.tsv, losses.png, samples/")
    add_resume_flag(parser)


if __name__ == "__main__":
    run_stage(__doc__, main, add_args)
