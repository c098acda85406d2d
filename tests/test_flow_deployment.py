"""The Prefect deployment on a process work pool: a local server and worker on 127.0.0.1 run it with
one override (the stage's output in the run's logs, params.yaml restored); a bad override fails the
run once, before any stage, without retries."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_checkout, free_port, stop_process_group, tiny_params, wait_http

pytestmark = pytest.mark.servers
BIN = Path(sys.executable).parent
DRIVER = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

runs = {name: run_deployment("cocosnet-pipeline/t", parameters={"overrides": [setting]}, timeout=400, poll_interval=1)
        for name, setting in (("good", "synthetic.seed=7"), ("bad", "synthetic.seed=seven"))}
with get_client(sync_client=True) as client:
    out = {}
    for name, run in runs.items():
        run = client.read_flow_run(run.id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        out[name] = {"state": run.state.type.value, "runs": run.run_count, "message": run.state.message or "",
                     "logs": [entry.message for entry in logs]}
print("RESULT " + json.dumps(out))
"""


def test_a_worker_runs_the_deployment_with_an_override_and_a_bad_one_fails_once(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    port = free_port()
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1", "CI": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db"}

    def sh(*cmd, cwd):
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    copy_checkout(repo, sh)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params("data/raw/synthetic", "data/processed"),
                                                     sort_keys=False))
    before = (repo / "params.yaml").read_text()
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    with server_log.open("w") as log:
        server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", server, timeout=240, log=server_log)
        sh(sys.executable, "-m", "pipelines.deploy", "--name", "t", "--pool", "test-pool", "--targets", "synthesize",
           cwd=repo)
        with worker_log.open("w") as log:
            worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "test-pool"], cwd=repo, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        out = sh(sys.executable, "-c", DRIVER, cwd=tmp_path)
    finally:
        if worker is not None:
            stop_process_group(worker)
        stop_process_group(server)
    result = json.loads(out.split("RESULT ", 1)[1])
    good, bad = result["good"], result["bad"]
    assert good["state"] == "COMPLETED", (good, worker_log.read_text()[-3000:])
    assert any("synthetic.seed=7" in m for m in good["logs"])
    assert any(m.startswith("synthesize | ") for m in good["logs"]), good["logs"]  # the stage's own output
    assert (repo / "params.yaml").read_text() == before  # restored after the run
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["synthesize"]["params"]["params.yaml"]["synthetic"]["seed"] == 7
    assert bad["state"] == "FAILED" and bad["runs"] == 1 and "synthetic.seed" in bad["message"], bad
    assert not any(m.startswith("synthesize | ") for m in bad["logs"])
