# Two set-up commands (README): `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench bench-batch bench-collect lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

## The Machine on its embedded default: Airflow (SQLite, LocalExecutor) from var/, the demo set once, then on
## until Ctrl-C (devstack/; options: make run ARGS="--port 8081 --once --new-set").
run: $(STAMP)
	$(BIN)/python -m devstack $(ARGS)

## Stop the stack of `make run` from another shell, also one whose launcher died (says so when none runs).
.PHONY: stop
stop:
	$(BIN)/python -m devstack --stop $(ARGS)

## Lint (ruff, mypy --strict on openaddr/ and plugins/: pyproject's [tool.mypy]), then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

## With `make run` up, from another shell: commit a change of a demo source to the fake GitHub, send its signed push
## delivery to the webhook and follow the job it made (python -m devstack push; another source:
## make push ARGS="sources/us/pa/bucks.json").
.PHONY: push
push: $(STAMP)
	$(BIN)/python -m devstack push $(ARGS)

## A long run of the fuzz suite (tests/fuzz, issue 10): FUZZ_EXAMPLES random cases (default 5000) from a random
## seed it prints first; the figures are printed at the end and written to bench-out/fuzz-figures.json.
## Repeat a run with FUZZ_SEED=<seed>; FUZZ_JOBS and FUZZ_TIMEOUT set parallelism and the time limit of a case.
.PHONY: fuzz
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	@seed=$${FUZZ_SEED:-$$($(BIN)/python -c 'import random; print(random.getrandbits(32))')}; \
	echo "fuzz seed: $$seed (repeat with FUZZ_SEED=$$seed)"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_FIGURES=bench-out/fuzz-figures.json \
	  $(BIN)/pytest -q -p no:cacheprovider tests/fuzz $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Conform speed and memory (never part of the tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_conform.py

## The batch DAG over 1,000 generated tiny sources on the embedded stack: Airflow overhead per source.
bench-batch: $(STAMP)
	$(BIN)/python benchmarks/bench_batch.py

## Collect's zip step over ~2 GB of generated run zips next to a bare unzip + re-zip of the same members with the same
## deflate: rows/s, MB/s, the share and peak RSS (quick run: make bench-collect ARGS="--size-mb 200").
bench-collect: $(STAMP)
	$(BIN)/python benchmarks/bench_collect.py $(ARGS)

## The webhook under gunicorn on PostgreSQL (then SQLite) with loopback fakes of GitHub and Airflow: signed
## deliveries at 100/s for 30 s from a second process; p50/p99/max, errors, lost and doubled deliveries.
.PHONY: bench-webhook
bench-webhook: $(STAMP)
	$(BIN)/python benchmarks/bench_webhook.py $(ARGS)

## Re-pin requirements.lock (every pin with its sha256 hashes) from pyproject.toml, keeping the current pins where they
## still satisfy it (uv reads the existing file); commit the result. Upgrade one: make lock ARGS="-P NAME".
UV_VERSION := 0.13.9
define LOCK_HEADER
# The working set of every install (developer, CI, image), installed with hash checking:
#   pip install --require-hashes --no-deps -r requirements.lock && pip install --no-deps -e .
# Regenerate with 'make lock' after changing pyproject.toml; tests/test_lock.py checks it is current.
endef
export LOCK_HEADER
lock:
	test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q uv==$(UV_VERSION); }
	cp requirements.lock requirements.lock.new
	.venv-lock/bin/uv pip compile pyproject.toml --group dev --group bench --generate-hashes --no-header -q \
	  --python-version $$($(PYTHON) -c 'import platform; print(platform.python_version())') $(ARGS) -o requirements.lock.new
	{ printf '%s\n' "$$LOCK_HEADER"; cat requirements.lock.new; } > requirements.lock && rm requirements.lock.new

clean:
	rm -rf .venv-lock $(VENV) var bench-out .pytest_cache .ruff_cache .mypy_cache
