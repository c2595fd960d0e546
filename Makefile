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

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tune-criteria tune test clean-studies

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
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

# Run the built-in criteria study: PAR worker processes, N_TRIALS finished trials in total.
tune-criteria: $(STAMP)
	$(BIN)/hpo tune study=criteria par=$(PAR) $(if $(N_TRIALS),study.n_trials=$(N_TRIALS)) $(ARGS)

# Any study: make tune ARGS="study=toy par=4"
tune: $(STAMP)
	$(BIN)/hpo tune par=$(PAR) $(if $(N_TRIALS),study.n_trials=$(N_TRIALS)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Delete the study databases in _optuna/ (the folder stays).
clean-studies:
	rm -f _optuna/*.db _optuna/*.db-wal _optuna/*.db-shm
