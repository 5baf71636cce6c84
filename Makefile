# The two commands of the README: `make run` (whole pipeline on params.yaml) and `make test`.
# Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# CPU machines: the CPU wheel (DESIGN §10). GPU machines: make run TORCH_SPEC='torch>=2.3'
TORCH_SPEC ?= torch==2.13.0
CORES  ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test venv lint clean-outputs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/default
	@echo "Report: $(CURDIR)/reports/html/index.html (open it in a browser); metrics: metrics/*.json"
	@echo "Runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db ; compare: $(BIN)/python -m pipeline compare"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

clean-outputs:
	rm -rf data logs metrics plots models reports work .snakemake
