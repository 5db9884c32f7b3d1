"""The fuzz suite of issue 10: hostile variants of real corpus files and fixtures through the real command line.

One test per (category, command). Hypothesis draws batches of :data:`BATCH` case recipes
(:mod:`tests.fuzz.strategies`); the harness runs a batch in parallel subprocesses (:mod:`tests.fuzz.harness`) and
the test fails with every broken property of every case in the batch. Hypothesis, not atheris: the inputs are
structured recipes over real files rather than byte strings for coverage-guided mutation, the runs are
reproducible from a seed (``derandomize`` in ``make test``), failures print as readable recipes, it is pure Python
on pytest, and atheris would need a libFuzzer build and in-process targets, while every case here must be a
separate ``openaddr`` process (exit code, memory, files).

``FUZZ_EXAMPLES`` (default 264: two batches per test) is the number of cases in the whole suite, spread evenly over the tests;
``FUZZ_SEED`` replaces the derandomised seed (``make fuzz``); ``FUZZ_JOBS`` and ``FUZZ_TIMEOUT`` set the
parallelism and the time limit of one case.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st

from tests.fuzz.harness import JOBS, run_cases
from tests.fuzz.strategies import STRATEGIES

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fuzz.cases import Case

pytestmark = pytest.mark.fuzz

#: Cases per Hypothesis example, run at the same time.
BATCH = 2 * JOBS
TOTAL = int(os.environ.get("FUZZ_EXAMPLES") or 264)
SEED = os.environ.get("FUZZ_SEED")

FUZZ_SETTINGS = settings(
    max_examples=max(1, round(TOTAL / (len(STRATEGIES) * BATCH))),
    derandomize=SEED is None,
    database=None,
    deadline=None,
    phases=(
        Phase.explicit,
        Phase.generate,
    ),  # no shrinking: every run is a batch of processes; recipes are short
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.mark.parametrize(("category", "command"), list(STRATEGIES), ids=[f"{c}-{m}" for c, m in STRATEGIES])
def test_hostile_input_is_contained(category: str, command: str, fuzz_root: Path) -> None:
    """Every case: exit 0/1/2, no traceback, nothing outside --out, ≤ 1 GiB, in time (tests/fuzz/harness.py).

    Failures are collected rather than raised inside Hypothesis, so every drawn batch runs (the figures count them
    all and the report lists every failing case) and no failing batch is run twice to be replayed.
    """
    strategy = st.lists(
        STRATEGIES[(category, command)](command), min_size=BATCH, max_size=BATCH, unique_by=repr
    )
    failures: list[str] = []
    cases = 0

    @FUZZ_SETTINGS
    @given(batch=strategy)
    def run(batch: list[Case]) -> None:
        nonlocal cases
        cases += len(batch)
        failures.extend(outcome.report() for outcome in run_cases(batch, fuzz_root) if outcome.problems)

    if SEED is not None:
        run = seed(int(SEED))(run)
    run()
    assert not failures, f"{len(failures)} of {cases} cases failed:\n" + "\n".join(failures)
