"""The one place that talks to MLflow.

One experiment per profile (`cocosnet-<profile>`). A pipeline run is a parent
run, found or created by the tag `pipeline_run` = $COCOSNET_PIPELINE_RUN (the
Makefile and the Prefect flow set it); each stage is a nested run under it.
Params are the flattened params.yaml; metrics are logged with `step`; tags
carry the git sha, stage, device and the VGG weights used.

Tracking never stops training: if the server is unreachable or a call fails,
a warning is printed once and tracking switches off for the run.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import warnings
from dataclasses import asdict
from pathlib import Path

from cocosnet import __version__
from cocosnet.config import Config, flatten

PIPELINE_ENV = "COCOSNET_PIPELINE_RUN"


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


class Tracker:
    """Start with `with Tracker(cfg, stage, ...) as t:`; every method is safe to call when disabled."""

    def __init__(self, cfg: Config, stage: str, *, device: str, repo_root: Path = Path("."), enabled: bool = True):
        self.cfg, self.stage, self.enabled = cfg, stage, enabled
        self.tags = {"stage": stage, "device": device, "git_sha": code_version(), "profile": cfg.profile,
                     "vgg_weights": "random" if cfg.vgg.weights == "random" else Path(cfg.vgg.weights).name}
        self.uri = tracking_uri(cfg, repo_root)
        self.experiment = cfg.tracking.experiment or f"cocosnet-{cfg.profile}"
        self._mlflow = None
        self.run_id: str | None = None
        self.parent_id: str | None = None

    def _safe(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- tracking must never stop training
            warnings.warn(f"MLflow {what} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"tracking is off for this {self.stage} run, training goes on", stacklevel=3)
            self.enabled = False
            return None

    def __enter__(self) -> Tracker:
        self._safe("start", self._start)
        return self

    def _start(self) -> None:
        # Fail fast instead of retrying for minutes against a dead server.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.set_experiment(self.experiment)
        moved = relocate_local_store(self.uri)
        if moved:
            warnings.warn(f"MLflow store {self.uri} was moved or copied: the artifact folders of its experiments "
                          f"{', '.join(moved)} now point beside it", stacklevel=3)
        parent_id = None
        pipeline = os.environ.get(PIPELINE_ENV)
        if pipeline:
            found = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.pipeline_run = '{pipeline}'",
                                       output_format="list", max_results=1)
            if found:
                parent_id = found[0].info.run_id
            else:
                parent = mlflow.MlflowClient().create_run(exp.experiment_id, tags={"pipeline_run": pipeline},
                                                          run_name=f"pipeline {pipeline}")
                parent_id = parent.info.run_id
        self.parent_id = parent_id
        tags = dict(self.tags)
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = mlflow.start_run(run_name=self.stage, experiment_id=exp.experiment_id, tags=tags)
        self.run_id = run.info.run_id
        params = {k: str(v) for k, v in flatten(asdict(self.cfg)).items()}
        items = list(params.items())
        for i in range(0, len(items), 90):
            mlflow.log_params(dict(items[i:i + 90]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._safe("log_metrics", lambda: self._mlflow.log_metrics(metrics, step=step))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._safe("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._safe("set_tags", lambda: self._mlflow.set_tags(tags))

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self._safe("end", lambda: self._mlflow.end_run(status=status))
        if self.parent_id and (self.stage == "evaluate" or exc_type is not None):
            # evaluate is the last stage: the pipeline run ends with it (or with a failure).
            self._safe("end", lambda: self._mlflow.MlflowClient().set_terminated(self.parent_id, status))


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
