# Two set-up commands (README): `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench bench-batch lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q -c requirements.lock -e . --group dev --group bench
	touch $@

## The Machine on its embedded default: Airflow (SQLite, LocalExecutor) from var/, the demo set once, then on
## until Ctrl-C (devstack/; options: make run ARGS="--port 8081 --once --new-set").
run: $(STAMP)
	$(BIN)/python -m devstack $(ARGS)

## Stop the stack of `make run` from another shell, also one whose launcher died (says so when none runs).
.PHONY: stop
stop:
	$(BIN)/python -m devstack --stop $(ARGS)

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

## The batch DAG over 1,000 generated tiny sources on the embedded stack: Airflow overhead per source.
bench-batch: $(STAMP)
	$(BIN)/python benchmarks/bench_batch.py

## Re-pin requirements.lock from a fresh resolution of pyproject.toml (commit the result).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade "pip>=25.1"
	.venv-lock/bin/python -m pip install -q -e . --group dev --group bench
	{ head -2 requirements.lock; .venv-lock/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

clean:
	rm -rf $(VENV) var bench-out .pytest_cache .ruff_cache
