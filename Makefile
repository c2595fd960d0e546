# hpo — the two set-up commands are `make tune-criteria PAR=2` and `make test`; both install
# what they need into .venv on first use.

PYTHON ?= python3
VENV ?= .venv
# A CPU build is taken where the machine provides one; set TORCH_SPEC to install another torch.
TORCH_SPEC ?= torch==2.13.0
PAR ?= 2
N_TRIALS ?=
ARGS ?=
PYTEST_ARGS ?=
# make status / dashboard / stats / report: which study (plus ARGS overrides), and the port
STUDY ?= criteria
PORT ?= 8080

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tune-criteria tune test lint clean-studies status stop dashboard stats report plan browser gpu-wheels gpu-check

install: $(STAMP)

# The venv sees an existing torch of $(PYTHON) (it is kept); otherwise torch is installed
# pinned, before the project, so pip never resolves `torch` to the newest CUDA build.
$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "using the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@$(BIN)/python -c "import torch" >/dev/null 2>&1 || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
	@touch $@

# Run the built-in criteria study: PAR worker processes, N_TRIALS finished trials in total.
tune-criteria: $(STAMP)
	$(BIN)/hpo tune study=criteria par=$(PAR) $(if $(N_TRIALS),study.n_trials=$(N_TRIALS)) $(ARGS)

# Any study: make tune ARGS="study=toy par=4"
tune: $(STAMP)
	$(BIN)/hpo tune par=$(PAR) $(if $(N_TRIALS),study.n_trials=$(N_TRIALS)) $(ARGS)

# The test suite, after the checks that keep the house in order (lint, format, types).
test: $(STAMP) browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hpo tests bench hydra_plugins
	$(BIN)/ruff format --check hpo tests bench hydra_plugins
	$(BIN)/mypy hpo hydra_plugins

# The dashboard's browser test drives Debian's headless Chromium through /usr/bin/chromedriver;
# install both when missing and we are root (the test tool never downloads a browser).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the dashboard's browser test"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -q chromium chromium-driver || \
	      { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
	      >/tmp/hpo-apt-chromium.log 2>&1 || \
	      { tail -5 /tmp/hpo-apt-chromium.log; echo "chromium install failed (see above)"; }; \
	  else echo "no /usr/bin/chromium and not root: the dashboard's browser test will skip"; fi; \
	fi

# Live view of a study (another terminal while make tune-criteria runs): make status STUDY=toy
status: $(STAMP)
	$(BIN)/hpo status study=$(STUDY) $(ARGS)

# optuna-dashboard on the study's storage at http://127.0.0.1:$(PORT)
dashboard: $(STAMP)
	$(BIN)/hpo dashboard --port $(PORT) study=$(STUDY) $(ARGS)

# Stop every node of a study from any terminal (drain; ARGS=--now interrupts running trials)
stop: $(STAMP)
	$(BIN)/hpo stop study=$(STUDY) $(ARGS)

stats: $(STAMP)
	$(BIN)/hpo stats study=$(STUDY) $(ARGS)

# What-if on other cards and policies: make plan STUDY=criteria ARGS="--card-gib 24,80"
plan: $(STAMP)
	$(BIN)/hpo plan study=$(STUDY) $(ARGS)

# HTML report and memory PNG under reports/<study>/
report: $(STAMP)
	$(BIN)/hpo report study=$(STUDY) $(ARGS)

# Delete the studies in _optuna/ (the folder and its .gitkeep stay): each database with SQLite's
# -wal and -shm and the folder of hpo's files beside it (locks, checkpoints), and what older hpo
# kept beside the database instead (lock files, logs, <study>.ckpt/ and <study>.sim/ folders).
clean-studies:
	rm -f _optuna/*.db _optuna/*.db-wal _optuna/*.db-shm _optuna/*.lock _optuna/*.log
	rm -rf _optuna/*/

# GPU check (bench/gpu_check.py): the GPU-marked tests, the criteria presets' real peaks against
# hpo's estimates, study=criteria_gpu under par=2 and par=auto, and a trial over its overcommit
# cap (cap_overrun), in at most 9 minutes; it
# writes gpu_check.json, gpu_check.md and gpu_check.log to $OUT (default gpu-check-out/).
# An offline GPU machine has its own python3 with a CUDA torch but not hpo's other packages:
# first, on a networked machine, `make gpu-wheels` puts them in $(WHEELS)/ as wheels for its
# CPython 3.12 (never torch); `make gpu-check` there installs them into $(GPU_SITE) and runs
# with that python3. Where $(VENV) exists (a development machine) it runs with its python.
# GPU_CHECK_ARGS="--dry-run" checks the plumbing without a GPU (CPU and a simulated card).
WHEELS ?= .whl
GPU_SITE ?= /tmp/hpo-site
GPU_CHECK_ARGS ?=

gpu-wheels: $(STAMP)
	$(BIN)/python -m bench.gpu_wheels --dest $(WHEELS)
	@du -sh $(WHEELS)

gpu-check:
	@out="$${OUT:-gpu-check-out}"; \
	if [ -x $(BIN)/python ]; then \
	  PYTHONUNBUFFERED=1 $(BIN)/python -m bench.gpu_check --out "$$out" $(GPU_CHECK_ARGS); \
	elif ls $(WHEELS)/*.whl >/dev/null 2>&1; then \
	  $(PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	    --target $(GPU_SITE) $(WHEELS)/*.whl || exit 2; \
	  PYTHONPATH="$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" PYTHONUNBUFFERED=1 \
	    $(PYTHON) -m bench.gpu_check --out "$$out" $(GPU_CHECK_ARGS); \
	else \
	  echo "gpu-check: no $(WHEELS)/ (run make gpu-wheels on a networked machine) and no $(VENV)/"; \
	  exit 2; \
	fi
