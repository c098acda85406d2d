"""MLflow tracking (nested runs, params, metrics; a dead server never stops training) and the Prefect flow."""

import warnings
from pathlib import Path

import pytest

from cocosnet.config import load_config
from cocosnet.tracking import PIPELINE_ENV, Tracker
from tests.helpers import ROOT


def test_stage_runs_nest_under_the_pipeline_run(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(PIPELINE_ENV, "test-1")
    cfg = load_config(ROOT / "params.yaml")
    for stage in ("pretrain", "train", "evaluate"):
        with Tracker(cfg, stage, device="cpu") as t:
            t.log_metrics({"warp_self": 1.0}, step=1)
            t.log_metrics({"warp_self": 0.5}, step=2)
            (tmp_path / "a.txt").write_text("x")
            t.log_artifact(tmp_path / "a.txt", "reports")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cocosnet-demo"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("pipeline_run") == "test-1"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.data.tags["stage"] for r in children) == ["evaluate", "pretrain", "train"]
    assert parents[0].info.status == "FINISHED"  # evaluate, the last stage, ends the pipeline run
    child = children[0]
    assert child.data.params["model.align.widths"] == str(cfg.model.align.widths)
    assert child.data.tags["git_sha"].startswith("0.") and child.data.tags["vgg_weights"] == "random"
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "warp_self")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]


def test_an_unreachable_server_only_warns(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = load_config(ROOT / "params.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(cfg, "train", device="cpu") as t:
            t.log_metrics({"loss": 1.0}, step=1)
            t.log_artifact(Path(__file__))
    assert not t.enabled
    assert sum("MLflow" in str(w.message) for w in caught) == 1


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_flow_runs_the_dvc_stages_in_order(prefect_harness, monkeypatch):
    from cocosnet import flow

    ran = []
    monkeypatch.setattr(flow, "run_dvc_stage", lambda stage, params_file, repo: ran.append(stage) or "ok\n")
    done = flow.cocosnet_pipeline(params_file=ROOT / "params.yaml", targets=["pretrain"], experiment="t", repo=ROOT)
    assert done == ran == ["synthesize", "prepare", "render_keypoints", "build_pairs", "pretrain"]
    with pytest.raises(ValueError, match="unknown stage"):
        flow.cocosnet_pipeline.fn(targets=["nope"])


def test_flow_tasks_retry_only_where_safe():
    from cocosnet import flow

    assert flow.TASKS["prepare"].retries == 2
    assert flow.TASKS["pretrain"].retries == 0 and flow.TASKS["train"].retries == 0
