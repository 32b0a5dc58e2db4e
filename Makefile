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

.PHONY: setup test lint typecheck bench clean

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

bench: setup
	$(PY) benchmarks/logging_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
