# One source of truth for setup: the README, CI and the Dockerfiles all go through these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first, pinned, so the project's `torch>=…` range is already satisfied and pip
# never swaps in another build (a bare `torch` requirement pulls a multi-GB CUDA wheel).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= service,dev
PYTEST_ARGS ?=

HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_INDEX ?= demo/index

.PHONY: setup test lint typecheck bench bench-peers demo demo-index demo-model deploy-check clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check indexer service client tests benchmarks
	$(VENV)/bin/mypy

typecheck: setup
	$(VENV)/bin/mypy

# Peers for side-by-side benchmarks: LogIX's metadata says Python<3.11 but it runs on 3.11.
bench-peers: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pip install -q --ignore-requires-python --no-deps logix-ai==0.1.1
	$(PY) -m pip install -q --no-deps kronfluence==1.0.1

bench: bench-peers
	$(PY) benchmarks/logging_throughput.py

# The embedded default: the committed demo model and corpus, indexed once (the build resumes or
# is a no-op when the index is complete), then served with the chat page at http://$(HOST):$(PORT)/
demo-index: setup
	$(VENV)/bin/tributary index build --model demo/model --corpus demo/corpus --out $(DEMO_INDEX)

demo: demo-index
	$(VENV)/bin/tributary serve --index $(DEMO_INDEX) --enable-generate --host $(HOST) --port $(PORT)

# Regenerate the demo corpus and retrain the demo model (deterministic; ~15 min on 2 cores)
demo-model: setup
	$(PY) -m demo.tools.corpus_generator --out demo/corpus --seed 0
	$(PY) -m demo.tools.train_model --corpus demo/corpus --out demo/model

# Images, compose and Kubernetes manifests, without a Docker engine or a cluster
deploy-check: setup
	$(PY) -m pytest tests/deploy -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
