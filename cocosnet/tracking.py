"""The one place that talks to MLflow.

One experiment per profile (`cocosnet-<profile>`). A pipeline run is a parent
run, found or created by the tag `pipeline_run` = $COCOSNET_PIPELINE_RUN (the
Makefile and the Prefect flow set it), or under `dvc exp run` the experiment's
name ($DVC_EXP_NAME, also tagged `dvc_experiment`); each stage is a nested run
under it. Params are the flattened params.yaml; metrics are logged with `step`;
tags carry the git sha, stage, device and the VGG weights used, and for a model
its sha256 and the hashes of what it was trained from (`model_tags`).

Tracking never stops training, and a server that is down for a while loses
nothing: every call is queued with its own timestamp and sent in order; when a
request fails the queue is kept and retried with exponential backoff (1 s to
60 s) while training goes on, and the stage's end waits up to
$COCOSNET_TRACKING_FLUSH_S (default 120) seconds for the rest. MLflow's own
per-request retries are off (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0` unless set), so
a dead server costs a training step at most one request timeout per retry.
A request the server rejects (HTTP 4xx) is dropped with a warning; a rejected
start switches tracking off for the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
import warnings
from collections import deque
from dataclasses import asdict
from pathlib import Path

from cocosnet import __version__
from cocosnet.config import Config, flatten

PIPELINE_ENV = "COCOSNET_PIPELINE_RUN"
DVC_EXP_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for every stage it runs
FLUSH_ENV = "COCOSNET_TRACKING_FLUSH_S"
MAX_BACKOFF_S = 60.0
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


def code_version() -> str:
    """`<version>+<git sha>` for the run's tags (never written into model files: they stay byte-reproducible)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def tracking_uri(cfg: Config, repo_root: Path) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root.resolve()}/mlflow.db"


def relocate_local_store(uri: str) -> list[str]:
    """Point a moved or copied SQLite store's artifact folders at the `mlruns/` beside it.

    MLflow records each experiment's default artifact folder (`<folder of mlflow.db>/mlruns/<id>`) and
    each run's as absolute paths, so a clone that was moved or copied would go on logging into the
    original's folder. Only locations of that default form are rewritten (in the experiments and runs
    tables); any other artifact location is left as set. This also puts a new experiment's folder beside
    the store rather than in the working directory (MLflow's `./mlruns`). Returns the ids of the
    experiments relocated that held runs."""
    if not uri.startswith("sqlite:///"):
        return []
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return []
    root = str(db.resolve().parent / "mlruns")
    moved = []
    con = sqlite3.connect(db, timeout=60)
    try:
        with con:
            for exp_id, location in con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall():
                m = re.fullmatch(rf"(?:file://)?(/.*/mlruns)/{exp_id}", location or "")
                if not m or m[1] == root:
                    continue
                old = location[: -len(str(exp_id)) - 1]
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                            (f"{root}/{exp_id}", exp_id))
                changed = con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                                      "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                                      (root, len(old) + 1, exp_id, len(old), old)).rowcount
                if changed:
                    moved.append(str(exp_id))
    except sqlite3.Error:  # not an MLflow store of the expected schema: leave it to MLflow to say so
        return []
    finally:
        con.close()
    return moved


def _rejected(exc: Exception) -> bool:
    """True for an error that a retry would repeat: the server answered 4xx (but 429, too many requests)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def model_tags(sha256: str, inputs: dict | None) -> dict[str, str]:
    """Tags that tie a model file to its runs: its sha256 and the hashes of what it was trained from
    (the `inputs` a model file records: params, training rows, data, named files, code). The train
    and evaluate runs of one model carry the same values, so either finds the other."""
    tags = {"model_sha256": sha256}
    if inputs:
        tags["inputs_sha256"] = _digest(inputs)
        tags["trained_by_stage"] = str(inputs.get("stage", ""))
        for key in ("params", "code"):
            if key in inputs:
                tags[f"inputs.{key}_sha256"] = _digest(inputs[key])
        for key in ("pairs", "data"):
            if key in inputs:
                tags[f"inputs.{key}_sha256"] = str(inputs[key])
        for name, digest in sorted((inputs.get("files") or {}).items()):
            tags[f"inputs.file.{name}_sha256"] = str(digest)
    return tags


class Tracker:
    """Start with `with Tracker(cfg, stage, ...) as t:`; every method is safe to call when disabled."""

    def __init__(self, cfg: Config, stage: str, *, device: str, repo_root: Path = Path("."), enabled: bool = True,
                 flush_timeout: float | None = None):
        self.cfg, self.stage, self.enabled = cfg, stage, enabled
        self.tags = {"stage": stage, "device": device, "git_sha": code_version(), "profile": cfg.profile,
                     "vgg_weights": "random" if cfg.vgg.weights == "random" else Path(cfg.vgg.weights).name}
        self.uri = tracking_uri(cfg, repo_root)
        self.experiment = cfg.tracking.experiment or f"cocosnet-{cfg.profile}"
        self.flush_timeout = float(os.environ.get(FLUSH_ENV, "120")) if flush_timeout is None else flush_timeout
        self._client = None
        self._queue: deque = deque()
        self._failures = 0
        self._retry_at = 0.0
        self._warned = False
        self._monitor = None
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None

    @property
    def pending(self) -> int:
        """Calls queued and not yet accepted by the server."""
        return len(self._queue)

    def __enter__(self) -> Tracker:
        self._pump()
        return self

    def _warn(self, message: str) -> None:
        warnings.warn(f"MLflow ({self.stage} at {self.uri}): {message}", stacklevel=4)

    def _pump(self) -> None:
        """Send what is queued, in order, unless waiting out a backoff; never raises."""
        if not self.enabled or time.monotonic() < self._retry_at:
            return
        what = "start"
        try:
            if self.run_id is None:
                self._start()
            while self._queue:
                what = self._queue[0][0]
                self._send_front()
        except Exception as exc:  # noqa: BLE001 -- tracking must never stop training
            self._failed(what, exc)
            return
        if self._failures:
            self._warn(f"reachable again after {self._failures} failed attempt(s); the queued calls were sent")
        self._failures = 0

    def _failed(self, what: str, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        if _rejected(exc):
            if what == "start":
                self._warn(f"start rejected ({detail}); tracking is off for this run, training goes on")
                self.enabled = False
                self._queue.clear()
            else:
                self._warn(f"{what} rejected ({detail}); that call is dropped")
                self._pop_front()
            return
        self._failures += 1
        self._retry_at = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
        if not self._warned:
            self._warned = True
            self._warn(f"{what} failed ({detail}); calls are queued and retried with backoff, training goes on")

    def _start(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the queue retries, with backoff
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        if self.experiment_id is None:
            exp = client.get_experiment_by_name(self.experiment)
            self.experiment_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
            moved = relocate_local_store(self.uri)
            if moved:
                self._warn(f"the store was moved or copied: the artifact folders of its experiments "
                           f"{', '.join(moved)} now point beside it")
        dvc_exp = os.environ.get(DVC_EXP_ENV, "")
        pipeline = os.environ.get(PIPELINE_ENV) or dvc_exp
        tags = dict(self.tags)
        if dvc_exp:
            tags["dvc_experiment"] = dvc_exp
        if pipeline and self.parent_id is None:
            found = client.search_runs([self.experiment_id], filter_string=f"tags.pipeline_run = '{pipeline}'",
                                       max_results=1)
            if found:
                self.parent_id = found[0].info.run_id
            else:
                parent_tags = {"pipeline_run": pipeline, **({"dvc_experiment": dvc_exp} if dvc_exp else {})}
                name = f"dvc exp {dvc_exp}" if dvc_exp and pipeline == dvc_exp else f"pipeline {pipeline}"
                self.parent_id = client.create_run(self.experiment_id, tags=parent_tags, run_name=name).info.run_id
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
            tags["pipeline"] = pipeline  # the parent's `pipeline_run`, on the stage run (make compare shows it)
        self.run_id = client.create_run(self.experiment_id, tags=tags, run_name=self.stage).info.run_id
        # The params go first in the queue, so that a failure after the run exists never makes a second run.
        self._queue.appendleft(("params", [Param(k, str(v)) for k, v in flatten(asdict(self.cfg)).items()]))
        self._start_system_metrics()

    def _start_system_metrics(self) -> None:
        """MLflow's CPU/GPU/memory sampler, when MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING asks for it."""
        if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() not in ("1", "true"):
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            os.environ.setdefault("MLFLOW_TRACKING_URI", self.uri)
            self._monitor = SystemMetricsMonitor(self.run_id)
            self._monitor.start()
        except Exception as exc:  # noqa: BLE001 -- optional (needs psutil)
            self._warn(f"system metrics unavailable ({type(exc).__name__}: {exc})")
            self._monitor = None

    def _pop_front(self) -> None:
        """Drop the front call (for metrics, the whole batch `_send_front` would have sent)."""
        if self._queue[0][0] != "metrics":
            self._queue.popleft()
            return
        for _ in self._metric_batch():
            self._queue.popleft()

    def _metric_batch(self) -> list:
        """The metric calls at the front of the queue that fit one log_batch."""
        batch, count = [], 0
        for op in self._queue:
            if op[0] != "metrics" or (batch and count + len(op[1]) > METRICS_PER_BATCH):
                break
            batch.append(op)
            count += len(op[1])
        return batch

    def _send_front(self) -> None:
        from mlflow.entities import Metric

        op = self._queue[0]
        client = self._client
        if op[0] == "metrics":
            batch = self._metric_batch()
            metrics = [Metric(k, float(v), ts, step) for _, values, step, ts in batch for k, v in values.items()]
            client.log_batch(self.run_id, metrics=metrics)
        elif op[0] == "params":
            for i in range(0, len(op[1]), 100):
                client.log_batch(self.run_id, params=op[1][i:i + 100])
        elif op[0] == "tags":
            for k, v in op[1].items():
                client.set_tag(self.run_id, k, v)
        elif op[0] == "artifact":
            if Path(op[1]).exists():  # a sample deleted meanwhile (keep_last) has nothing to send
                client.log_artifact(self.run_id, str(op[1]), op[2])
        elif op[0] == "model":
            self._log_model(*op[1:])
        elif op[0] == "link":
            self._link_model_run(op[1])
        elif op[0] == "end":
            client.set_terminated(self.run_id, op[1])
            if op[2] and self.parent_id:
                client.set_terminated(self.parent_id, op[2])
        self._pop_front()

    def _log_model(self, model_file: Path, registered_name: str | None, log_model) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id):
            info = log_model(model_file, registered_name=registered_name)
        self._client.set_tag(self.run_id, "pyfunc_model_uri", info.model_uri)
        if registered_name:
            self._client.set_tag(self.run_id, "registered_model",
                                 f"{registered_name} version {info.registered_model_version}")

    def _link_model_run(self, sha256: str) -> None:
        """Tag this run with the run that logged the model file it read (same `model_sha256`), if any."""
        found = self._client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                         filter_string=f"tags.model_sha256 = '{sha256}' and tags.stage != '{self.stage}'")
        if found:
            self._client.set_tag(self.run_id, "model_run_id", found[0].info.run_id)
            self._client.set_tag(self.run_id, "model_run_stage", found[0].data.tags.get("stage", ""))

    def _enqueue(self, op: tuple) -> None:
        if self.enabled:
            self._queue.append(op)
            self._pump()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._enqueue(("metrics", dict(metrics), int(step), int(time.time() * 1000)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._enqueue(("artifact", Path(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._enqueue(("tags", {k: str(v) for k, v in tags.items()}))

    def tag_model(self, sha256: str, inputs: dict | None, *, link: bool = False) -> None:
        """`model_tags` on this run; with `link`, also the id of the run that logged that model file."""
        self.set_tags(model_tags(sha256, inputs))
        if link:
            self._enqueue(("link", sha256))

    def log_model(self, model_file: Path, log_model, *, registered_name: str | None = None) -> None:
        """`log_model(model_file, registered_name=...)` (cocosnet.serving.log_pyfunc: an MLflow pyfunc
        model under `model/`) in this run, registered as a new version of `registered_name` if given.
        The caller passes it so that only the stage that logs models imports the serving code."""
        self._enqueue(("model", Path(model_file), registered_name, log_model))

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        # evaluate is the last stage: the pipeline run ends with it (or with a failure).
        parent_status = status if (self.stage == "evaluate" or exc_type is not None) else None
        self._enqueue(("end", status, parent_status))
        self.flush()
        if self._monitor is not None:
            self._monitor.finish()

    def flush(self) -> None:
        """Wait (up to the flush timeout) until the queue is sent; warn with what is lost if it is not."""
        deadline = time.monotonic() + self.flush_timeout
        while self.enabled and (self._queue or self.run_id is None):
            now = time.monotonic()
            if now >= deadline:
                metrics = sum(len(op[1]) for op in self._queue if op[0] == "metrics")
                self._warn(f"still unreachable after {self.flush_timeout:.0f} s: {metrics} metric values and "
                           f"{len(self._queue)} queued calls in all were not logged (${FLUSH_ENV} waits longer)")
                self.enabled = False
                return
            time.sleep(max(0.0, min(self._retry_at, deadline) - now))
            self._pump()


def search_runs(uri: str, experiments: list[str] | None = None, filter_string: str = ""):
    """Runs as a pandas DataFrame (mlflow.search_runs columns: run_id, tags.*, params.*, metrics.*).

    experiments: names; None = every experiment in the store."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if experiments is None:
        experiments = [e.name for e in client.search_experiments()]
    else:
        missing = [name for name in experiments if client.get_experiment_by_name(name) is None]
        if missing:
            known = [e.name for e in client.search_experiments()]
            raise ValueError(f"no MLflow experiment named {missing} at {uri}; known: {known}")
    return mlflow.search_runs(experiment_names=experiments, filter_string=filter_string, output_format="pandas")


def experiment_names(uri: str) -> dict[str, str]:
    """experiment_id -> name."""
    import mlflow

    return {e.experiment_id: e.name for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()}
