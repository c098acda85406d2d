"""What the project leaves on disk for a team: readable modes, no orphan temporary files, a lock that
follows no planted link, an MLflow store that stays with its clone, one kernel build per checkout."""

import os
import shutil
import stat
import subprocess
import sys

import pytest

from cocosnet.config import load_config
from cocosnet.errors import StageLocked
from cocosnet.io import atomic_write
from cocosnet.models.kernels import build_name
from cocosnet.stage_run import stage_lock
from cocosnet.tracking import Tracker
from tests.helpers import ROOT


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == mode


def test_a_killed_writer_s_temporary_file_is_cleared_by_the_next_write(tmp_path):
    target = tmp_path / "model.pt"
    # A writer killed between its write and its rename (os.replace never returns).
    script = ("import os, sys\nsys.path.insert(0, sys.argv[2])\nfrom cocosnet import io\n"
              "io.os.replace = lambda *a: os._exit(9)\nio.atomic_write(io.Path(sys.argv[1]), b'half')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(target), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    orphans = list(tmp_path.glob(".model.pt.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    # A live writer's file (this process's parent stands in for one) is left alone.
    live = orphans[0].with_name(orphans[0].name.replace(orphans[0].name.split(".")[3].split("-")[1],
                                                         str(os.getppid()), 1))
    live.write_bytes(b"in progress")
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(tmp_path.glob(".model.pt.*.tmp")) == [live]


def test_the_stage_lock_follows_no_planted_link(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "evaluate.lock").symlink_to(victim)
    with pytest.raises(StageLocked, match=r"evaluate\.lock: is a symbolic link"):
        with stage_lock("evaluate", tmp_path / "locks"):
            pass
    assert victim.read_text() == "keep me"


def test_a_copied_mlflow_store_logs_beside_itself(tmp_path, monkeypatch):
    import mlflow

    cfg = load_config(ROOT / "params.yaml")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (tmp_path / "a.txt").write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first}/mlflow.db")
    with Tracker(cfg, "evaluate", device="cpu") as t:
        t.log_artifact(tmp_path / "a.txt", "reports")
    shutil.copytree(first, second)
    shutil.rmtree(first / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{second}/mlflow.db")
    with pytest.warns(UserWarning, match="was moved or copied"):
        with Tracker(cfg, "evaluate", device="cpu") as t:
            t.log_artifact(tmp_path / "a.txt", "reports")
    assert t.enabled and not (first / "mlruns").exists()
    mlflow.set_tracking_uri(f"sqlite:///{second}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["cocosnet-demo"], output_format="list")
    assert len(runs) == 2 and all(r.info.artifact_uri.startswith(str(second / "mlruns")) for r in runs)
    assert len(list((second / "mlruns").rglob("a.txt"))) == 2


def test_each_checkout_and_source_has_its_own_kernel_build(tmp_path):
    one, two = tmp_path / "one" / "kernels.cpp", tmp_path / "two" / "kernels.cpp"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("int x;\n")
    assert build_name("k", one) == build_name("k", one) != build_name("k", two)
    before = build_name("k", one)
    one.write_text("int y;\n")
    assert build_name("k", one) != before
