"""MLflow tracking (nested runs, params, metrics; a dead server never stops training) and the Prefect flow."""

import sys
import warnings
from pathlib import Path

import pytest

from cocosnet.config import ConfigError, load_config
from cocosnet.tracking import DVC_EXP_ENV, PIPELINE_ENV, Tracker, model_tags
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


def test_a_dvc_experiment_gets_a_parent_run_named_after_it_and_evaluate_finds_the_model_run(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(PIPELINE_ENV, raising=False)
    monkeypatch.setenv(DVC_EXP_ENV, "exp-abc")
    cfg = load_config(ROOT / "params.yaml")
    with Tracker(cfg, "train", device="cpu") as train:
        train.tag_model("f00d", {"stage": "train", "params": {}})
    with Tracker(cfg, "evaluate", device="cpu") as evaluate:
        evaluate.tag_model("f00d", {"stage": "train", "params": {}}, link=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(train.parent_id)
    assert parent.info.run_name == "dvc exp exp-abc" and parent.data.tags["dvc_experiment"] == "exp-abc"
    assert evaluate.parent_id == train.parent_id
    tags = client.get_run(evaluate.run_id).data.tags
    assert tags["model_run_id"] == train.run_id and tags["model_run_stage"] == "train"
    assert tags["dvc_experiment"] == "exp-abc" and tags["model_sha256"] == "f00d"


def test_an_unreachable_server_queues_the_calls_and_gives_up_only_at_the_end(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = load_config(ROOT / "params.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(cfg, "train", device="cpu", flush_timeout=1.5) as t:
            t.log_metrics({"loss": 1.0}, step=1)
            t.log_metrics({"loss": 0.5, "lr": 1e-4}, step=2)
            t.log_artifact(Path(__file__))
            assert t.enabled and t.pending == 3  # held for a retry, not dropped
    assert not t.enabled
    messages = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(messages) == 2 and "queued and retried" in messages[0]
    assert "3 metric values and 4 queued calls" in messages[1]  # the end call is queued too


def test_model_tags_tie_a_model_file_to_what_it_was_trained_from():
    inputs = {"stage": "train", "params": {"a": 1}, "pairs": "p1", "data": "d1", "files": {"init": "i1", "vgg": None},
              "code": {"x.py": "c1"}}
    tags = model_tags("m1", inputs)
    assert tags["model_sha256"] == "m1" and tags["trained_by_stage"] == "train"
    assert tags["inputs.pairs_sha256"] == "p1" and tags["inputs.file.init_sha256"] == "i1"
    changed = model_tags("m1", {**inputs, "params": {"a": 2}})
    assert changed["inputs.params_sha256"] != tags["inputs.params_sha256"]
    assert changed["inputs_sha256"] != tags["inputs_sha256"] and changed["inputs.code_sha256"] == tags["inputs.code_sha256"]
    assert model_tags("m2", None) == {"model_sha256": "m2"}


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_flow_runs_the_dvc_stages_in_order_with_overrides_for_the_run(prefect_harness, monkeypatch, tmp_path):
    from cocosnet import flow

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    before = (repo / "params.yaml").read_text()
    seen = []

    def fake(stage, root, log):
        seen.append((stage, load_config(root / "params.yaml").train.steps))
        return "Stage 'x' didn't change, skipping\n" if stage == "synthesize" else "Running stage\n"

    monkeypatch.setattr(flow, "run_dvc_stage", fake)
    done = flow.cocosnet_pipeline(overrides=["train.steps=7"], targets=["pretrain"], experiment="t", repo=str(repo))
    assert list(done) == [s for s, _ in seen] == ["synthesize", "prepare", "render_keypoints", "build_pairs", "pretrain"]
    assert {steps for _, steps in seen} == {7} and done["synthesize"] == "up to date" and done["pretrain"] == "ran"
    assert (repo / "params.yaml").read_text() == before  # restored
    seen.clear()
    with pytest.raises(ConfigError, match="train.stepz"):
        flow.cocosnet_pipeline(overrides=["train.stepz=7"], repo=str(repo))
    with pytest.raises(ConfigError, match="train.steps"):
        flow.cocosnet_pipeline(overrides=["train.steps=-1"], repo=str(repo))
    assert seen == [] and (repo / "params.yaml").read_text() == before
    with pytest.raises(ValueError, match="unknown stage"):
        flow.cocosnet_pipeline.fn(targets=["nope"])


def test_flow_tasks_retry_only_where_safe_and_never_after_bad_input():
    from cocosnet import flow

    assert flow.TASKS["prepare"].retries == 2
    assert flow.TASKS["pretrain"].retries == 0 and flow.TASKS["train"].retries == 0

    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self):
            raise self.exc

    assert not flow.retry_unless_bad_input(None, None, State(flow.StageFailed("bad", 2)))
    assert flow.retry_unless_bad_input(None, None, State(flow.StageFailed("flaky", 1)))
    assert flow.retry_unless_bad_input(None, None, State(OSError("disk")))
    dvc_error = "ERROR: failed to reproduce 'prepare': failed to run: python -m stages.prepare, exited with 2"
    assert flow.stage_status(255, dvc_error) == 2 and flow.stage_status(1, "boom") == 1


def test_streamed_output_reaches_the_log_line_by_line_and_a_failure_keeps_its_tail(tmp_path):
    from cocosnet import flow

    lines = []
    out = flow.run_streamed([sys.executable, "-c", "print('a'); print('b')"], tmp_path, lines.append)
    assert lines == ["a", "b"] and out == "a\nb"
    with pytest.raises(flow.StageFailed, match="exit status 2") as failed:
        flow.run_streamed([sys.executable, "-c", "print('why'); raise SystemExit(2)"], tmp_path, lines.append)
    assert failed.value.status == 2 and "why" in str(failed.value)


def test_overrides_parse_like_dvc_set_and_keep_the_files_comments(tmp_path):
    from cocosnet.profiles import parse_overrides, write_overrides

    assert parse_overrides(["train.steps=200", "model.align.widths=[8, 8, 8, 8]", "vgg.weights=random"]) == {
        "train": {"steps": 200}, "model": {"align": {"widths": [8, 8, 8, 8]}}, "vgg": {"weights": "random"}}
    for bad in ("train.steps", "=3", "train..steps=1"):
        with pytest.raises(ConfigError, match="expected <section>.<key>=<value>"):
            parse_overrides([bad])
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    write_overrides(params, parse_overrides(["train.steps=123"]))
    text = params.read_text()
    assert "steps: 123" in text and "# domain-alignment U-Nets" in text and load_config(params).train.steps == 123
