# Kushim: `make demo` runs the whole pipeline on a built-in demo account; `make test` runs every check and test.
# Both create .venv with python3 (3.11+) on first use and install what they need from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean schemas

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kushim needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo,dev]'
	@touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/kushim demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

schemas: $(VENV)/.installed-dev
	$(BIN)/python -m shared.asyncapi --write

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

bench: $(VENV)/.installed-dev
	$(BIN)/python -m tests.bench.bench_pipeline; status=$$?; $(BIN)/python -m tests.bench.bench_scale || status=$$?; $(BIN)/python -m tests.bench.bench_evidence || status=$$?; $(BIN)/python -m tests.bench.bench_scheduler --requests 500 --repeat 3 || status=$$?; $(BIN)/python -m tests.bench.bench_scaleout || status=$$?; exit $$status
