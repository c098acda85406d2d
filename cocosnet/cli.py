"""The `cocosnet` command (installed by the README's set-up).

    cocosnet generate --model models/refine.pt --exemplar person.jpg --exemplar-pose person.json \
        --pose target.json --out out.png [--panel panel.png] [--size W H] [--device cuda]
    cocosnet generate --model models/refine.pt --pairs pairs.csv --out-dir outputs/
    cocosnet import-official --corr latest_net_Corr.pth --gen latest_net_G.pth --out models/official.pt

Errors a user can act on print as one line (`error: ...`) and exit with status 2; COCOSNET_DEBUG=1
shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from cocosnet.errors import CocosnetError


def _overrides(found: dict, current: dict, prefix: str = "model") -> list[str]:
    """`-S key=value` items that turn `current` (a params model section) into `found`."""
    out = []
    for key, value in found.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out += _overrides(value, current.get(key, {}), name)
        elif value != current.get(key):
            shown = str(list(value)).replace(" ", "") if isinstance(value, (list, tuple)) else value
            out.append(f"{name}={str(shown).lower() if isinstance(value, bool) else shown}")
    return out


def import_official(args: argparse.Namespace) -> None:
    from cocosnet.config import load_config
    from cocosnet.io import sha256_file
    from cocosnet.models.official import load_official
    from cocosnet.train.checkpoint import save_model

    params = load_config(args.params)
    notes: list[str] = []
    model = load_official(args.corr, args.gen, notes=notes)
    found = model.config
    cfg = replace(params, model=found)
    inputs = {"official_corr": sha256_file(Path(args.corr)), "official_gen": sha256_file(Path(args.gen))}
    save_model(Path(args.out), model, config=asdict(cfg), stage="official", step=0, inputs=inputs)
    for note in notes:
        print(f"import-official: {note}")
    print(f"import-official: wrote {args.out} (widths {list(found.align.widths)}, match channels "
          f"{found.align.match_channels}, ngf {found.generator.ngf})")
    changes = _overrides(asdict(found), asdict(params.model))
    if changes:
        print(f"import-official: {args.params} must hold these model settings to evaluate or fine-tune it "
              "(docs/official_weights.md):\n  " + "\n  ".join(changes))


def _device(name: str) -> str:
    """The --device value, checked before the model is loaded: cpu, or cuda[:N] where CUDA is."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: expected cpu or cuda (cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: expected cpu or cuda (cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device here; leave --device out to run on CPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def _size(size: list[int] | None) -> tuple[int, int] | None:
    from cocosnet.limits import MAX_SIDE_ENV, image_caps

    if size is None:
        return None
    side, pixels = image_caps()
    width, height = size
    if not (1 <= width <= side and 1 <= height <= side) or width * height > pixels:
        raise UsageError(f"--size {width} {height}: expected two positive integers, at most {side} a side and "
                         f"{pixels / 1e6:g} MP (raise with --max-image-side / --max-image-pixels, or {MAX_SIDE_ENV})")
    return width, height


def generate(args: argparse.Namespace) -> None:
    from cocosnet.generate import generate_one, load_model_file, output_format, run_pairs, save_image
    from cocosnet.io import sha256_file
    from cocosnet.limits import MAX_PIXELS_ENV, MAX_SIDE_ENV

    single = [args.exemplar, args.exemplar_pose, args.pose, args.out]
    if args.pairs is None and not all(single):
        raise UsageError("give --exemplar, --exemplar-pose, --pose and --out, or --pairs and --out-dir")
    if args.pairs is not None and (any(single) or args.panel or args.out_dir is None):
        raise UsageError("--pairs goes with --out-dir only (the CSV names each row's files)")
    for env, value in ((MAX_SIDE_ENV, args.max_image_side), (MAX_PIXELS_ENV, args.max_image_pixels)):
        if value is not None:
            if value < 1:
                raise UsageError(f"--max-image-{'side' if env == MAX_SIDE_ENV else 'pixels'} {value}: expected a "
                                 "positive integer")
            os.environ[env] = str(value)
    size = _size(args.size)
    device = _device(args.device)
    for name in (args.out, args.panel):
        if name:
            output_format(name)
    model, cfg = load_model_file(args.model, device)
    if args.pairs is None:
        result = generate_one(model, cfg, args.exemplar, args.exemplar_pose, args.pose, size=size,
                              device=device, exemplar_pose_name=args.exemplar_pose_name, pose_name=args.pose_name)
        save_image(result.image, args.out)
        if args.panel:
            save_image(result.panel, args.panel)
        print(f"generate: wrote {args.out} ({result.image.width}x{result.image.height})"
              + (f" and {args.panel}" if args.panel else ""))
        return
    done = run_pairs(model, cfg, Path(args.pairs), Path(args.out_dir), model_sha=sha256_file(Path(args.model)),
                     size=size, device=device)
    print(f"generate: {done.made} written, {done.kept} kept from an earlier run with this model, size and inputs, "
          f"{done.replaced} made again (an earlier run's model, size or inputs differed), {len(done.failures)} failed")
    for line in done.failures:
        print(f"  failed: {line}")
    if done.failures:
        sys.exit(2)


class UsageError(CocosnetError):
    """Flags that do not go together."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cocosnet", description="CoCosNet v2 tools")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="draw the person of an exemplar photo in a new pose")
    gen.add_argument("--model", required=True, help="a model file of this project (models/refine.pt)")
    gen.add_argument("--exemplar", help="the photo of the person (any size)")
    gen.add_argument("--exemplar-pose", help="its keypoints (OpenPose/COCO JSON, pose-transfer CSV, "
                                             "DeepFashion-HD candidate/subset)")
    gen.add_argument("--pose", help="the target pose's keypoints (in the exemplar photo's pixels, or a "
                                    "DeepFashion-HD file)")
    gen.add_argument("--out", help="the output .png or .jpg, at the exemplar's size unless --size")
    gen.add_argument("--panel", help="also write exemplar | target pose | finest warp | output")
    gen.add_argument("--pairs", help="a CSV exemplar,exemplar_pose,pose,out for a batch (resumable)")
    gen.add_argument("--out-dir", help="where --pairs outputs go")
    gen.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="output size")
    gen.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    gen.add_argument("--exemplar-pose-name", help="the entry of a keypoint file with several (COCO annotations, "
                                                  "pose-transfer rows); default: the exemplar's file name")
    gen.add_argument("--pose-name", help="the entry of a target keypoint file with several")
    gen.add_argument("--max-image-side", type=int, help="refuse photos with a longer side (default 10000)")
    gen.add_argument("--max-image-pixels", type=int, help="refuse photos with more pixels (default 40000000)")
    gen.set_defaults(run=generate)
    imp = sub.add_parser("import-official", help="convert the official latest_net_Corr.pth + latest_net_G.pth "
                                                 "into a model file of this project")
    imp.add_argument("--corr", required=True, help="the official latest_net_Corr.pth")
    imp.add_argument("--gen", required=True, help="the official latest_net_G.pth")
    imp.add_argument("--out", default="models/official.pt", help="the model file to write")
    imp.add_argument("--params", default="params.yaml", help="params whose non-model sections the file records")
    imp.set_defaults(run=import_official)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CocosnetError as exc:
        if os.environ.get("COCOSNET_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
