# cmkd-pipe: every target runs from a fresh clone (`make install` happens on demand).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
CLI := $(VENV)/bin/cmkd-pipe
DATASET ?= demo
DATA_ROOT ?= data/$(DATASET)
RUN_DIR ?= runs/$(DATASET)
NPROC ?= 1
PYTEST_ARGS ?=

.PHONY: install test demo manifest features clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The main job on the built-in demo corpus.
demo: install
	$(CLI) run --dataset demo --data-root data/demo --run-dir runs/demo

manifest: install
	$(CLI) run --dataset $(DATASET) --data-root $(DATA_ROOT) --run-dir $(RUN_DIR) --until manifest

features: install
	$(CLI) run --dataset $(DATASET) --data-root $(DATA_ROOT) --run-dir $(RUN_DIR) --until features

clean-demo:
	rm -rf data/demo runs/demo
