# The two commands a new user needs: `make run` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PE_ROOT := $(CURDIR)
# Spark, torch and Airflow share 2 cores on a laptop; keep BLAS from oversubscribing them.
export OMP_NUM_THREADS ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: help install run serve test test-fast lint generate benchmark benchmark-pipeline airflow-standalone jobs-zip clean clean-var

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-20s %s\n", $$1, $$2}'

$(STAMP): setup.cfg constraints.txt pyproject.toml scripts/venv_spark_home.py
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" wheel "setuptools>=68"
	@# torch first, pinned to the CPU build: a looser request would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@# .venv/bin/spark-submit without an activated venv: its find-spark-home would run a bare python3.
	$(BIN)/python scripts/venv_spark_home.py $(VENV)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies

run: $(STAMP) ## Generate the default world when missing and run the nightly DAG for its latest date
	$(BIN)/pe run

serve: $(STAMP) ## Serve the read API for apps on 127.0.0.1:8000 (keys from PE_API_KEYS; SERVE_ARGS=--insecure-no-auth to try it)
	$(BIN)/pe serve $(SERVE_ARGS)

test: $(STAMP) ## Run the test suite (PostgreSQL/Redis tests skip locally when absent, run in CI)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## Tests without the end-to-end pipeline runs
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## Ruff over the code
	$(BIN)/ruff check personalization jobs models dags tests benchmarks

generate: $(STAMP) ## Generate the synthetic world (SCALE=tiny|small|medium|large)
	$(BIN)/pe generate --scale $(or $(SCALE),small)

benchmark: $(STAMP) ## Run the benchmarks; JSON and Markdown under results/
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

benchmark-pipeline: $(STAMP) ## Nightly stages per scale, growth exponents, component ratios (SCALES="tiny small medium")
	$(BIN)/python benchmarks/bench_pipeline.py --scales $(or $(SCALES),tiny small)

airflow-standalone: $(STAMP) ## Start Airflow (UI, scheduler, ...) on var/airflow; creates its DB and the Spark pool first
	eval "$$($(BIN)/pe airflow-env)" && $(BIN)/pe airflow-setup && exec airflow standalone

jobs-zip: $(STAMP) ## Package jobs/ and personalization/ for spark-submit --py-files (dist/personalization-jobs.zip)
	$(BIN)/python scripts/build_jobs_zip.py dist/personalization-jobs.zip

clean-var: ## Delete generated data, MLflow store, serving DB and Airflow DB (var/)
	rm -rf var

clean: clean-var ## Also delete .venv, results and dist
	rm -rf $(VENV) results dist
