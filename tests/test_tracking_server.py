"""Tracking against a real `mlflow server` on 127.0.0.1 (SQLite, and PostgreSQL where its binaries
exist): a training stage loses no logged step when the server goes down and comes back."""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from cocosnet.tracking import PIPELINE_ENV, Tracker
from cocosnet.train.inputs import PRETRAIN
from cocosnet.train.loop import RunPaths, run_training
from tests.helpers import CPU, free_port, prepare_data, stop_process_group, tiny_training_config, wait_http

pytestmark = pytest.mark.servers
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


@pytest.fixture(scope="module")
def data(tiny_raw, tmp_path_factory):
    processed = tmp_path_factory.mktemp("processed")
    prepare_data(tiny_raw, processed)
    return tiny_raw, processed


class MlflowServer:
    """`mlflow server` on a fixed port, stopped and started again on demand."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts)]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_http(f"{self.uri}/health", self.proc, timeout=180, log=self.log)

    def stop(self) -> None:
        stop_process_group(self.proc)


@contextmanager
def running(server: MlflowServer):
    server.start()
    try:
        yield server
    finally:
        server.stop()


def train_through_an_outage(data, tmp_path, monkeypatch, backend: str) -> None:
    """Pretrain 8 steps against the server, which is stopped after step 2 and back after step 5; every
    step of every metric must be in the server afterwards, in a run tied to its pipeline run."""
    raw, processed = data
    server = MlflowServer(backend, tmp_path / "artifacts", tmp_path / "server.log")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv(PIPELINE_ENV, "outage-test")
    cfg = tiny_training_config(raw, processed, crop=32)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=8, checkpoint_every=4))
    logged: dict[int, dict] = {}
    with running(server), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(cfg, "pretrain", device="cpu", flush_timeout=120) as tracker:
            def log(metrics, step):
                if step == 3:
                    server.stop()
                tracker.log_metrics(metrics, step)
                logged[step] = metrics
                if step == 3:
                    assert tracker.pending > 0  # the server is down: held, not dropped
                if step == 5:
                    server.start()

            paths = RunPaths(ckpt_dir=tmp_path / "ckpt", out_model=tmp_path / "model.pt",
                             reports=tmp_path / "reports")
            run_training(cfg, PRETRAIN, pd.read_parquet(processed / "pairs.parquet"), paths, info=CPU,
                         log=log, artifact=tracker.log_artifact, tag=tracker.set_tags, show_progress=False)
            tracker.log_artifact(paths.reports / "losses.tsv", "plots")
        assert tracker.enabled and tracker.pending == 0
        messages = [str(w.message) for w in caught if "MLflow" in str(w.message)]
        assert any("queued and retried" in m for m in messages) and any("reachable again" in m for m in messages)

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=server.uri)
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["pipeline_run"] == "outage-test"
        assert sorted(logged) == list(range(1, 9))
        for key in logged[1]:
            history = client.get_metric_history(tracker.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(s, pytest.approx(logged[s][key])) for s in
                                                                   sorted(logged)], key
        artifacts = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
        assert artifacts == {"plots/losses.tsv"}


def test_a_training_stage_loses_no_step_while_a_sqlite_server_restarts(data, tmp_path, monkeypatch):
    train_through_an_outage(data, tmp_path, monkeypatch, f"sqlite:///{tmp_path}/mlflow.db")


@contextmanager
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (as `nobody` when run as root: it refuses root)."""
    bin_dir = PG_BIN[-1].parent
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user and not shutil.which("runuser"):
        pytest.skip("PostgreSQL refuses to run as root and runuser is missing")
    folder = Path(tempfile.mkdtemp(prefix="cocosnet-pg-"))
    data_dir = folder / "data"
    if as_user:
        shutil.chown(folder, "nobody")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
        run(str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(folder / "pg.log"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -h 127.0.0.1 -k {folder}")
        try:
            yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not PG_BIN, reason="PostgreSQL server binaries (pg_ctl, initdb) are not installed")
def test_a_training_stage_loses_no_step_while_a_postgresql_backed_server_restarts(data, tmp_path, monkeypatch):
    pytest.importorskip("psycopg2", reason="MLflow's PostgreSQL backend needs psycopg2 (requirements.txt)")
    with postgres() as backend:
        train_through_an_outage(data, tmp_path, monkeypatch, backend)
