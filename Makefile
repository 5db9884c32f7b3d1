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

## checkov (tests/infra) in a venv of its own: it pins cachetools<6 against Airflow's >=6. From infra/checkov.lock,
## with hashes, like the main one.
CHECKOV_STAMP := .venv-checkov/.installed
$(CHECKOV_STAMP): infra/checkov.lock
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q --require-hashes --no-deps -r infra/checkov.lock
	touch $@

## Lint (ruff, mypy --strict on openaddr/ and plugins/: pyproject's [tool.mypy]), then the whole test suite.
test: $(STAMP) $(CHECKOV_STAMP)
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

## The cross-source dedupe over 2,000,000 generated collection rows (and 500,000, for the memory comparison):
## rows/s of the whole -processed step, its phases, and the peak RSS.
.PHONY: bench-dedupe
bench-dedupe: $(STAMP)
	$(BIN)/python benchmarks/bench_dedupe.py $(ARGS)

## The webhook under gunicorn on PostgreSQL (then SQLite) with loopback fakes of GitHub and Airflow: signed
## deliveries at 100/s for 30 s from a second process; p50/p99/max, errors, lost and doubled deliveries.
.PHONY: bench-webhook
bench-webhook: $(STAMP)
	$(BIN)/python benchmarks/bench_webhook.py $(ARGS)

## The preview image: its time on the largest fixture and on 1,000,000 points, next to the run's whole time.
.PHONY: bench-preview
bench-preview: $(STAMP)
	$(BIN)/python benchmarks/bench_preview.py $(ARGS)

## The quality gate's coverage check: its time on the largest fixture and on 1,000,000 points, next to the run's.
.PHONY: bench-coverage
bench-coverage: $(STAMP)
	$(BIN)/python benchmarks/bench_coverage.py $(ARGS)

## ArcGIS paging: a generated 200,000-feature layer from the loopback ArcGIS server at 200 ms a page, one page at a
## time against 4 at once; times, speed-up, identical bytes (benchmarks/bench_esri.py; dry run: ARGS="--quick").
.PHONY: bench-esri
bench-esri: $(STAMP)
	$(BIN)/python benchmarks/bench_esri.py $(ARGS)

## Re-pin requirements.lock (every pin with its sha256 hashes) from pyproject.toml, keeping the current pins where they
## still satisfy it (uv reads the existing file); commit the result. Upgrade one: make lock ARGS="-P NAME".
UV_VERSION := 0.13.9
define LOCK_HEADER
# The working set of every install (developer, CI, image), installed with hash checking:
#   pip install --require-hashes --no-deps -r requirements.lock && pip install --no-deps -e .
# Regenerate with 'make lock' after changing pyproject.toml; tests/test_lock.py checks it is current.
endef
export LOCK_HEADER
define IMAGE_LOCK_HEADER
# The image's share of requirements.lock (docker/Dockerfile): the Machine's, Airflow's and the webhook's packages at
# the same pins and hashes, without the development tools. Written by 'make lock'; tests/docker checks it agrees.
endef
export IMAGE_LOCK_HEADER
lock:
	test -x .venv-lock/bin/uv || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q uv==$(UV_VERSION); }
	cp requirements.lock requirements.lock.new
	.venv-lock/bin/uv pip compile pyproject.toml --group dev --group bench --generate-hashes --no-header -q \
	  --python-version $$($(PYTHON) -c 'import platform; print(platform.python_version())') $(ARGS) -o requirements.lock.new
	{ printf '%s\n' "$$LOCK_HEADER"; cat requirements.lock.new; } > requirements.lock && rm requirements.lock.new
	cp docker/requirements.lock docker/requirements.lock.new
	.venv-lock/bin/uv pip compile pyproject.toml --group airflow --group webhook -c requirements.lock --generate-hashes \
	  --no-header -q --python-version $$($(PYTHON) -c 'import platform; print(platform.python_version())') \
	  -o docker/requirements.lock.new
	{ printf '%s\n' "$$IMAGE_LOCK_HEADER"; cat docker/requirements.lock.new; } > docker/requirements.lock \
	  && rm docker/requirements.lock.new
	.venv-lock/bin/uv pip compile infra/checkov.in --generate-hashes --no-header -q \
	  --python-version $$($(PYTHON) -c 'import platform; print(platform.python_version())') -o infra/checkov.lock.new
	{ echo "# checkov's working set (infra/checkov.in), every pin with its hashes; written by 'make lock'."; \
	  cat infra/checkov.lock.new; } > infra/checkov.lock && rm infra/checkov.lock.new

clean:
	rm -rf .venv-lock .venv-checkov $(VENV) var bench-out .pytest_cache .ruff_cache .mypy_cache
