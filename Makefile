# Two commands do everything:  make pipeline  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL_FREE_TESTS := tests/test_kernels.py tests/test_patchmatch.py tests/test_knobs.py tests/test_models.py tests/test_memory.py tests/test_pose_geometry.py tests/test_ranking.py

# Offline and quiet, for every command (see docs/pipeline.md).
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: pipeline test venv dag bench flow mlflow-ui mlflow-server prefect-server deploy worker push pull compare study study-gan

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m cocosnet.models.kernels
	touch $(STAMP)

pipeline: $(STAMP)
	COCOSNET_PIPELINE_RUN=$${COCOSNET_PIPELINE_RUN:-make-$$(date +%Y%m%d-%H%M%S)} $(VENV)/bin/dvc repro

# The suite, then the model's tests again on the tensor code GPU users run (no CPU kernels); ruff first.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
	COCOSNET_CPU_KERNELS=0 $(PY) -m pytest $(KERNEL_FREE_TESTS)

# The correspondence study (hours; resumable run by run): docs/studies/correspondence.md
study: $(STAMP)
	$(PY) -m stages.study

# The generation study (about 2 hours; resumable run by run): docs/studies/generation.md
study-gan: $(STAMP)
	$(PY) -m stages.study --gan

dag: $(STAMP)
	$(VENV)/bin/dvc dag

bench: $(STAMP)
	$(PY) -m bench.data
	$(PY) -m bench.correspondence
	$(PY) -m bench.metrics
	$(PY) -m bench.matcher
	$(PY) -m bench.train_step

# Rank the evaluate runs in MLflow: make compare METRIC=paired.ssim.model
compare: $(STAMP)
	$(PY) -m stages.compare --metric $${METRIC:-swd.model}

flow: $(STAMP)
	$(PY) -m pipelines.flow

# Data and models through the DVC remote this checkout names as default (docs/scale.md).
push: $(STAMP)
	$(VENV)/bin/dvc push

pull: $(STAMP)
	$(VENV)/bin/dvc pull

# Prefect for a team (docs/scale.md): a server, the flow deployed on a process work pool, a worker.
prefect-server: $(STAMP)
	$(VENV)/bin/prefect server start --host $${PREFECT_HOST:-127.0.0.1} --port $${PREFECT_PORT:-4200}

deploy: $(STAMP)
	$(PY) -m pipelines.deploy $(ARGS)

worker: $(STAMP)
	$(VENV)/bin/prefect worker start --pool $${POOL:-cocosnet}

# A tracking server for a team (docs/scale.md): a SQL backend store (PostgreSQL for a team:
# MLFLOW_BACKEND_STORE=postgresql+psycopg2://user@host/db) and the artifacts served through it.
# Runs then log to it with MLFLOW_TRACKING_URI=http://<host>:<port>.
mlflow-server: $(STAMP)
	$(VENV)/bin/mlflow server --host $${MLFLOW_HOST:-127.0.0.1} --port $${MLFLOW_PORT:-5000} --workers 1 \
		--backend-store-uri $${MLFLOW_BACKEND_STORE:-sqlite:///$(CURDIR)/mlflow-server.db} \
		--artifacts-destination $${MLFLOW_ARTIFACTS:-$(CURDIR)/mlflow-artifacts}

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri $(MLFLOW_TRACKING_URI)
