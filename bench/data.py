"""Data benchmark: pose labels per second at the 1024 canvas (1 core, all cores) and
synthetic images per second. Writes reports/bench/data.json.

    python -m bench.data [--labels 60] [--repeats 3] [--against REF]

--against REF also times the label code of git revision REF (cocosnet/data/pose.py there), on one
core, interleaved with the current code's runs, so a change to the drawing is measured side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from cocosnet.data.pose import render_pose_label
from cocosnet.data.synthetic import Identity, SyntheticSpec, generate, render_view


def _poses(n: int, seed: int = 0) -> list[np.ndarray]:
    """Keypoints from the synthetic pose model, mapped to the 1024 frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = render_view(Identity.sample(i, rng), i, rng, 204, 300)
        out.append(r.keypoints * 1024 / 300 + (1024 - 204 * 1024 / 300) / 2 * np.array([1, 0]))
    return out


def _render_chunk(poses: list[np.ndarray], render=render_pose_label) -> int:
    cv2.setNumThreads(1)
    for kp in poses:
        render(kp)
    return len(poses)


def _pose_module_at(ref: str):
    """cocosnet/data/pose.py as it was at git revision `ref`, imported under another name."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{ref}:cocosnet/data/pose.py"], cwd=root, capture_output=True,
                            text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pose_at_ref.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("pose_at_ref", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def labels_per_second(poses: list[np.ndarray], workers: int, render=render_pose_label) -> float:
    chunks = [poses[i::workers] for i in range(workers)]
    start = time.perf_counter()
    if workers == 1:
        _render_chunk(poses, render)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_render_chunk, chunks))
    return len(poses) / (time.perf_counter() - start)


def synthetic_per_second(n_identities: int, workers: int, size: tuple[int, int]) -> float:
    spec = SyntheticSpec(num_identities=n_identities, views_per_identity=4, image_width=size[0],
                         image_height=size[1], val_fraction=0.1, jpeg_quality=95, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate(spec, Path(tmp) / "syn", workers=workers, show_progress=False)
        return summary["images"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", metavar="REF", help="also time the label code of this git revision")
    parser.add_argument("--out", default="reports/bench/data.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    poses = _poses(args.labels)
    runs = {"labels_per_s_1core": [], f"labels_per_s_{cores}cores": [],
            "synthetic_images_per_s_demo_204x300_1core": [],
            f"synthetic_images_per_s_demo_204x300_{cores}cores": [],
            "synthetic_images_per_s_750x1101_1core": []}
    before = _pose_module_at(args.against) if args.against else None
    if before is not None:
        runs[f"labels_per_s_1core_at_{args.against}"] = []
    for _ in range(args.repeats):
        runs["labels_per_s_1core"].append(labels_per_second(poses, 1))
        if before is not None:
            runs[f"labels_per_s_1core_at_{args.against}"].append(labels_per_second(poses, 1, before.render_pose_label))
        runs[f"labels_per_s_{cores}cores"].append(labels_per_second(poses, cores))
        runs["synthetic_images_per_s_demo_204x300_1core"].append(synthetic_per_second(30, 1, (204, 300)))
        runs[f"synthetic_images_per_s_demo_204x300_{cores}cores"].append(synthetic_per_second(30, cores, (204, 300)))
        runs["synthetic_images_per_s_750x1101_1core"].append(synthetic_per_second(5, 1, (750, 1101)))
    result = {
        "machine": {"cores": cores, "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "settings": {"labels": args.labels, "repeats": args.repeats, "canvas": 1024},
        "median": {k: round(statistics.median(v), 2) for k, v in runs.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }
    result["median"]["labels_speedup_all_cores"] = round(
        result["median"][f"labels_per_s_{cores}cores"] / result["median"]["labels_per_s_1core"], 2)
    if before is not None:
        result["median"][f"labels_speedup_vs_{args.against}"] = round(
            result["median"]["labels_per_s_1core"] / result["median"][f"labels_per_s_1core_at_{args.against}"], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
