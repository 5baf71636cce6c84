# The two commands of the README: `make run` (whole pipeline on params.yaml) and `make test`.
# Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# CPU machines: the CPU build of torch from PyTorch's CPU index (PyPI's Linux wheel is the CUDA
# build, several GB). GPU machines: make run TORCH_SPEC='torch>=2.3' TORCH_INDEX=  (PyPI's CUDA
# build), or TORCH_INDEX=https://download.pytorch.org/whl/cu126 for another CUDA version.
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CORES  ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test venv lint clean-outputs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --retries 1 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/default
	@# record the outputs in DVC's cache and lock, so that `dvc status` and `dvc repro` agree with
	@# this run (a seeded run's outputs are byte-identical, so on the recorded machine the lock stays as it is)
	$(BIN)/dvc commit -f --no-relink --quiet
	@echo "Report: $(CURDIR)/reports/html/index.html (open it in a browser); metrics: metrics/*.json"
	@echo "Runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db ; compare: $(BIN)/python -m pipeline compare"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

clean-outputs:
	rm -rf data logs metrics plots models reports work .snakemake
