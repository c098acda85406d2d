"""Scoring image files against a reference set, as the evaluate stage and `stages.score_folders` do.

Each function takes the reference files and named candidate sets (e.g. {"model": fake,
"copy_exemplar": exemplar}) whose files pair up with the reference by position, so the
reference is read once however many candidates are scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cocosnet.limits import open_image
from cocosnet.metrics.fid import FidUnavailable, file_statistics, frechet_distance, load_inception
from cocosnet.metrics.images import chunks, load_image_set, paired_files
from cocosnet.metrics.paired import l1, psnr, ssim
from cocosnet.metrics.swd import sliced_wasserstein

PAIRED = {"l1": l1, "psnr": psnr, "ssim": ssim}


def _to_signed(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _check_counts(real: list[Path], candidates: dict[str, list[Path]]) -> None:
    for who, files in candidates.items():
        if len(files) != len(real):
            raise ValueError(f"{who}: {len(files)} images, but the reference set has {len(real)}")


def paired_scores(real: list[Path], candidates: dict[str, list[Path]], *,
                  functions: dict | None = None) -> dict[str, dict[str, float]]:
    """{metric: {who: mean over pairs}} for L1 / PSNR / SSIM (or the per-image `functions` of (candidate,
    reference) batches in [-1, 1]), reading the files a chunk at a time."""
    functions = PAIRED if functions is None else functions
    _check_counts(real, candidates)
    sums = {name: dict.fromkeys(candidates, 0.0) for name in functions}
    batches = zip(chunks(real), *(chunks(files) for files in candidates.values()))
    for real_chunk, *candidate_chunks in batches:
        reference = load_image_set(real_chunk)
        for who, chunk in zip(candidates, candidate_chunks):
            images = load_image_set(chunk)
            if images.shape != reference.shape:
                raise ValueError(f"{chunk[0]} is {images.shape[2]}x{images.shape[1]} but {real_chunk[0]} is "
                                 f"{reference.shape[2]}x{reference.shape[1]}; paired sets must have one size")
            for name, fn in functions.items():
                sums[name][who] += float(fn(_to_signed(images), _to_signed(reference)).sum())
    return {name: {who: total / len(real) for who, total in d.items()} for name, d in sums.items()}


def swd_scores(real: list[Path], candidates: dict[str, list[Path]], *, size: int, seed: int,
               device: torch.device | str = "cpu", independent_draws: bool = True) -> dict[str, dict[str, float]]:
    """{who: {"<resolution>": ..., "avg": ...}}; size > 0 resizes every image first.
    independent_draws=True is the PGGAN protocol (see `cocosnet.metrics.swd`)."""
    _check_counts(real, candidates)
    reference = load_image_set(real, size)
    return {who: sliced_wasserstein(reference, load_image_set(files, size), seed=seed, device=device,
                                    independent_draws=independent_draws)
            for who, files in candidates.items()}


def fid_scores(real: list[Path], candidates: dict[str, list[Path]], *, weights: str,
               device: torch.device | str = "cpu") -> dict[str, float]:
    """{who: FID against real}; raises FidUnavailable without a usable weights file."""
    network = load_inception(weights)
    reference = file_statistics(real, network, device=device)
    return {who: frechet_distance(*reference, *file_statistics(files, network, device=device))
            for who, files in candidates.items()}


def score_folders(real_dir: Path, fake_dir: Path, *, paired: bool, swd_size: int, inception_weights: str,
          seed: int) -> dict:
    """SWD, FID (when `inception_weights` names the file) and, if `paired`, L1/PSNR/SSIM of fake_dir's images
    against real_dir's, paired by file name."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real, fake = paired_files(real_dir, fake_dir)
    candidate = {"fake": fake}
    with open_image(real[0]) as first:
        out: dict = {"images": len(real), "size": list(first.size)}
    if paired:
        out["paired"] = {name: d["fake"] for name, d in paired_scores(real, candidate).items()}
    out["swd"] = swd_scores(real, candidate, size=swd_size, seed=seed, device=device)["fake"]
    try:
        out["fid"] = fid_scores(real, candidate, weights=inception_weights, device=device)["fake"]
    except FidUnavailable as exc:
        out["fid"] = {"unavailable": str(exc)}
    return out
