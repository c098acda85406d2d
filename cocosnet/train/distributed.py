"""Data parallelism under torchrun: gloo on CPU, nccl on GPU (COCOSNET_DIST_BACKEND=gloo where nccl is
missing, e.g. some single-GPU or Windows set-ups); rank 0 logs and checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend(device: torch.device) -> str:
    """The process-group backend: COCOSNET_DIST_BACKEND when set, else nccl on CUDA and gloo on CPU."""
    chosen = os.environ.get("COCOSNET_DIST_BACKEND", "").strip()
    if chosen and chosen not in ("gloo", "nccl"):
        raise ValueError(f"COCOSNET_DIST_BACKEND must be gloo or nccl, got {chosen!r}")
    return chosen or ("nccl" if device.type == "cuda" else "gloo")


def setup() -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend(device))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world=world, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class StepBatches:
    """The per-rank indices of every training step, from a DistributedSampler.

    Step s lies in epoch s // steps_per_epoch. The sampler's seeded permutation
    does not depend on the world size, and rank r takes positions r, r + R, ...;
    so the union of the ranks' batches at a step is the single-process batch,
    and any step can be produced directly, which makes resuming exact.
    """

    def __init__(self, dataset_len: int, global_batch: int, info: DistInfo, seed: int):
        if global_batch % info.world:
            raise ValueError(f"batch size {global_batch} is not divisible by the world size {info.world}")
        if dataset_len < global_batch:
            raise ValueError(f"{dataset_len} training pairs are fewer than one batch of {global_batch}")
        self.per_rank = global_batch // info.world
        self.steps_per_epoch = dataset_len // global_batch
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=info.world, rank=info.rank,
                                          shuffle=True, seed=seed, drop_last=True)
        self._epoch, self._order = -1, []

    def __call__(self, step: int) -> tuple[int, list[int]]:
        """(epoch, this rank's dataset indices) for `step`."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return epoch, self._order[j * self.per_rank:(j + 1) * self.per_rank]
