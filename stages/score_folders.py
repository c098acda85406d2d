"""Score any two image folders with this project's protocol: SWD (PGGAN), FID (pytorch-fid Inception,
when its weights are given) and, for paired sets, L1/PSNR/SSIM. Files pair up by name.

    python -m stages.score_folders --real GT_DIR --fake OUTPUT_DIR [--paired] [--swd-size 256]
        [--inception-weights weights/pt_inception-2015-12-05-6726825d.pth] [--out scores.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cocosnet.errors import CocosnetError
from cocosnet.io import atomic_write_json
from cocosnet.limits import MAX_PIXELS_ENV, MAX_SIDE_ENV
from cocosnet.metrics.scoring import score_folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, type=Path)
    parser.add_argument("--fake", required=True, type=Path)
    parser.add_argument("--paired", action="store_true", help="also L1/PSNR/SSIM of fake/NAME against real/NAME")
    parser.add_argument("--swd-size", type=int, default=0, help="resize for SWD (CoCosNet's script: 256)")
    parser.add_argument("--inception-weights", default="", help="pytorch-fid Inception file; empty = no FID")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-image-side", type=int, help=f"refuse images with a longer side (sets {MAX_SIDE_ENV})")
    parser.add_argument("--max-image-pixels", type=int, help=f"refuse images with more pixels (sets {MAX_PIXELS_ENV})")
    args = parser.parse_args()
    for env, value in ((MAX_SIDE_ENV, args.max_image_side), (MAX_PIXELS_ENV, args.max_image_pixels)):
        if value is not None:
            os.environ[env] = str(value)
    try:
        result = score_folders(args.real, args.fake, paired=args.paired, swd_size=args.swd_size,
                       inception_weights=args.inception_weights, seed=args.seed)
    except (CocosnetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
