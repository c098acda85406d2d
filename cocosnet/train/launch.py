"""The training stages start torchrun themselves when params.yaml's `launch` section asks for more
than one process, so that `dvc repro` and the Prefect flow run DDP with no wrapper (docs/scale.md).

One node: `launch.nproc_per_node: N` -> `torchrun --standalone --nproc_per_node N -m stages.<stage> ...`.
Several nodes: every node runs the same command with the same params (`nnodes`, and the c10d
rendezvous `rdzv_endpoint` host:port on one of them); the node that runs `dvc repro` records the
stage, the others run `python -m stages.<stage>` with the same flags. Every rank reads the
checkpoint folder at start (to resume), so it must be on a filesystem all nodes share; only rank 0
writes it. Socket settings (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME) are the cluster's to set.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cocosnet.config import LaunchConfig
from cocosnet.stage_run import PARENT_HOLDS_LOCK_ENV

LAUNCHED_ENV = "WORLD_SIZE"  # set by torchrun in every process it starts


def wants_torchrun(launch: LaunchConfig) -> bool:
    """More than one process asked for, and this process was not started by a launcher."""
    return launch.nproc_per_node * launch.nnodes > 1 and LAUNCHED_ENV not in os.environ


def torchrun_command(launch: LaunchConfig, module: str, argv: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={launch.nproc_per_node}",
           f"--nnodes={launch.nnodes}"]
    if launch.rdzv_endpoint:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={launch.rdzv_endpoint}", f"--rdzv_id={launch.rdzv_id}"]
    else:
        cmd.append("--standalone")
    return [*cmd, "-m", module, *argv]


def run_torchrun(launch: LaunchConfig, module: str, argv: list[str]) -> int:
    """Run `module` under torchrun with these flags; returns its exit status. The calling stage holds
    the stage lock for the whole run, so the ranks do not take it again."""
    cmd = torchrun_command(launch, module, argv)
    world = launch.nproc_per_node * launch.nnodes
    print(f"{module}: launching {launch.nproc_per_node} processes on each of {launch.nnodes} node(s), "
          f"{world} in all: {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, check=False, env={**os.environ, PARENT_HOLDS_LOCK_ENV: "1"}).returncode
