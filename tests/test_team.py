"""A team's set-up, end to end on 127.0.0.1: a checkout trains through `dvc repro` with two DDP
processes that the stage launches itself (`launch.nproc_per_node: 2`), pushes to a directory remote,
and a fresh clone pulls, finds the pipeline up to date and the model byte-identical."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_checkout, tiny_params

pytestmark = pytest.mark.servers
BIN = Path(sys.executable).parent


def sh(*cmd, cwd: Path, timeout: float = 300) -> str:
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "DVC_NO_ANALYTICS": "1",
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "CI": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_a_clone_pulls_the_ddp_trained_model_from_the_team_remote(tmp_path):
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    a.mkdir()
    copy_checkout(a, sh)
    params = tiny_params("data/raw/synthetic", "data/processed", crop=32)
    params["launch"]["nproc_per_node"] = 2
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(BIN / "dvc", "remote", "add", "-d", "team", remote, cwd=a)
    out = sh(BIN / "dvc", "repro", "pretrain", cwd=a, timeout=600)
    assert "launching 2 processes" in out  # the stage started torchrun itself
    sh(BIN / "dvc", "push", "--with-deps", "pretrain", cwd=a)
    sh("git", "add", "-A", cwd=a)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "trained", cwd=a)

    sh("git", "clone", "-q", a, b, cwd=tmp_path)
    sh(BIN / "dvc", "pull", "--with-deps", "pretrain", cwd=b)
    assert "up to date" in sh(BIN / "dvc", "status", "pretrain", cwd=b)
    assert "didn't change" in sh(BIN / "dvc", "repro", "pretrain", cwd=b) and not (b / "checkpoints").exists()
    for name in ("models/pretrain.pt", "data/processed/pairs.parquet"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
