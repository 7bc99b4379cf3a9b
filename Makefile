# cmkd-pipe: every target works from a fresh clone (`make install` runs on demand).
# Stage targets are real Make dependencies on the stages' completion records: `cmkd-pipe plan` writes
# $(RUN_DIR)/plan.mk, one rule per stage (target: <stage>/stage.json; prerequisites: the records of its
# inputs and its own config.json, rewritten only when the config changes). A failed or killed stage has
# no new record, so the next `make` reruns it and what depends on it, nothing else.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
CLI := $(abspath $(VENV))/bin/cmkd-pipe
DATASET ?= demo
DATA_ROOT ?=
RUN_DIR ?= runs/$(DATASET)
NPROC ?= 1
SCHEDULER ?=
SET ?=
FOLDS ?=
PRESET ?=
JOBS ?= 1
HUB ?=
# TEACHER=path (or FAMILY=path, several separated by spaces): published teachers imported instead of trained;
# TEACHER_LABELS=class_labels_indices.csv names their outputs when the file does not; ALLOW_UNMAPPED=1 accepts
# corpus classes the teacher has no label for.
TEACHER ?=
TEACHER_LABELS ?=
ALLOW_UNMAPPED ?=
PYTEST_ARGS ?=
PLAN := $(RUN_DIR)/plan.mk
PLAN_ARGS = --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) --run-dir $(RUN_DIR) --nproc $(NPROC) \
	$(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(HUB),--pretrained-from-hub) $(foreach s,$(SET),--set '$(s)') \
	$(if $(FOLDS),--folds $(FOLDS)) $(if $(PRESET),--preset $(PRESET)) $(TEACHER_ARGS)
TEACHER_ARGS = $(foreach t,$(TEACHER),--teacher '$(t)') $(if $(TEACHER_LABELS),--teacher-labels $(TEACHER_LABELS)) \
	$(if $(ALLOW_UNMAPPED),--allow-unmapped)

.PHONY: install install-test test test-all demo bench gpu-check cmkd manifest features train import-teacher teacher-logits train-student \
	report status plan

# install: what the pipeline needs (make demo and the stage targets); install-test adds the test-only
# packages (pytest and the oracles: scikit-learn, transformers, onnx, ...) for make test / test-all.
install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# pip compiles every installed file to bytecode on one core; compileall on all cores is ~20 s faster (files
# that do not compile are skipped, as pip skips them).
COMPILE = $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --no-compile -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --no-compile -e '.[test]'
	$(COMPILE)
	touch $@

# The fast tier (<= 4 min on 2 cores): everything but the tests marked slow (SIGKILL/fault, cluster,
# end-to-end). test-all runs every test (what CI runs). Tests train tiny models, often in several
# processes at once: one torch thread per process (unless OMP_NUM_THREADS says otherwise) is the fastest.
TEST_ENV = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=$${MKL_NUM_THREADS:-1}

test: install-test
	$(TEST_ENV) $(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install-test
	$(TEST_ENV) $(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The main job on the built-in demo corpus (DATASET=demo-multilabel for the multi-label variant): data,
# features, both teachers, both logit stores, the students and the online reference over 3 test folds,
# report. Two stages at a time, one thread each; the chunk stages run in-process (the corpus is small).
demo: install
	$(CLI) run --dataset $(DATASET) --run-dir $(RUN_DIR) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) --jobs 2 \
		--scheduler synchronous $(foreach s,$(SET),--set '$(s)') $(if $(FOLDS),--folds $(FOLDS))

plan: install
	$(CLI) plan $(PLAN_ARGS) --cli $(CLI) --out $(PLAN)

# JOBS=N runs N independent stages at once, each with cores/N threads.
THREADS = $(shell echo $$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )))

cmkd: plan
	OMP_NUM_THREADS=$(THREADS) $(MAKE) -j$(JOBS) -f $(PLAN) stage-all
	@cat $(RUN_DIR)/report/report.md

manifest features train import-teacher teacher-logits train-student report: plan
	OMP_NUM_THREADS=$(THREADS) $(MAKE) -j$(JOBS) -f $(PLAN) stage-$@

status: install
	$(CLI) status --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) --run-dir $(RUN_DIR) $(foreach s,$(SET),--set '$(s)') \
		$(if $(FOLDS),--folds $(FOLDS)) $(if $(PRESET),--preset $(PRESET)) $(TEACHER_ARGS)

# Every benchmark (benchmarks/results.py), variants alternated, into benchmarks/RESULTS.md: one table of
# before/after ratios with the machine's load. About 20 min on 2 cores; QUICK=1 runs the tiny smoke versions.
QUICK ?=
bench: install-test
	$(VENV)/bin/python -m benchmarks.results --out benchmarks/RESULTS.md $(if $(QUICK),--quick)

# The prepared GPU check (benchmarks/gpu.py): one JSON of teacher-inference and student-step numbers on the
# paper-size models; without CUDA a tiny CPU version that only proves it runs.
gpu-check: install
	$(VENV)/bin/python -m benchmarks.gpu --out benchmarks/gpu-check.json
