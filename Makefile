# Two set-up commands (README): `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q -e . --group dev --group bench
	touch $@

## The Machine on its embedded default. Until the Airflow DAGs land this runs the conform demo.
run: $(STAMP)
	$(BIN)/python -m openaddr.demo var/demo

## Lint, then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Conform speed and memory (never part of the tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_conform.py

clean:
	rm -rf $(VENV) var bench-out .pytest_cache .ruff_cache
