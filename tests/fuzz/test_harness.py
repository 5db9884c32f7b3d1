"""The harness itself: unmodified bases pass, and each broken property is caught.

If these fail, the fuzz suite's verdicts mean nothing; they must pass before and after the fixes of issue 10.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from tests.fuzz.cases import (
    RUNNABLES,
    Case,
    conform_case,
    corpus_files_with_tests,
    process_one_case,
    read_shared,
    source_case,
)
from tests.fuzz.harness import RSS_LIMIT, run_case, run_cases
from tests.fuzz.strategies import PROCESS_ONE

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fuzz.harness import Outcome

pytestmark = pytest.mark.fuzz


def _controls() -> dict[str, Case]:
    cases = {f"conform-{r.name}": conform_case("control", r, "unmodified") for r in RUNNABLES}
    for runnable in RUNNABLES:
        if runnable.name in PROCESS_ONE:
            cases[f"process-one-{runnable.name}"] = process_one_case("control", runnable, "unmodified")
    for command in ("validate", "test-source"):
        for base in corpus_files_with_tests()[:3]:
            cases[f"{command}-{base.rsplit('/', 1)[-1]}"] = source_case(
                "control", command, base, "unmodified", read_shared(base)
            )
    return cases


CONTROL_IDS = [f"conform-{r.name}" for r in RUNNABLES] + [f"process-one-{r}" for r in PROCESS_ONE]


@pytest.fixture(scope="session")
def control_outcomes(fuzz_root: Path) -> dict[str, Outcome]:
    """Every unmodified base through its commands, run in parallel once."""
    cases = _controls()
    return dict(zip(cases, run_cases(cases.values(), fuzz_root), strict=True))


@pytest.mark.parametrize("name", [*CONTROL_IDS, "validate", "test-source"])
def test_unmodified_base_passes(name: str, control_outcomes: dict[str, Outcome]) -> None:
    """Every base as it is exits 0 and breaks no property (validate and test-source: three corpus files each)."""
    outcomes = [
        o
        for key, o in control_outcomes.items()
        if key == name or key.startswith(f"{name}-") and name in ("validate", "test-source")
    ]
    assert outcomes
    failures = [o.report() for o in outcomes if o.problems or o.exit_code != 0]
    assert not failures, "\n".join(failures)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


PROBE = Case("harness", "validate", "-", "probe", {"data.csv": b"a,b\n"}, ("{in}/data.csv",))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("open('in/data.csv', 'a').write('x')", "changed the sandbox outside --out: modified in/data.csv"),
        (
            "open('tmp/openaddr-leftover', 'w')",
            "changed the sandbox outside --out: wrote tmp/openaddr-leftover",
        ),
        ("import os; os.remove('in/data.csv')", "changed the sandbox outside --out: removed in/data.csv"),
        ("import os; os.makedirs('w/x/y/out/a'); open('w/x/y/out/a/index.json', 'w')", None),
        ("raise ValueError('boom')", "a Python traceback on stderr"),
        ("import sys; sys.exit(3)", "ended with exit 3, not exit 0, 1 or 2"),
        ("import os; os.kill(os.getpid(), 11)", "ended with signal 11 (SIGSEGV), not exit 0, 1 or 2"),
        ("import time; time.sleep(60)", "still running after 3 s: killed"),
        (
            f"b = b'x' * {RSS_LIMIT + (64 << 20)}; import time; time.sleep(60)",
            "resident memory over 1024 MiB: killed",
        ),
    ],
    ids=[
        "modified",
        "leftover",
        "removed",
        "inside-out",
        "traceback",
        "exit-3",
        "signal",
        "timeout",
        "memory",
    ],
)
def test_each_broken_property_is_caught(code: str, expected: str | None, fuzz_root: Path) -> None:
    outcome = run_case(PROBE, fuzz_root, timeout=3, program=_python(code))
    if expected is None:
        assert outcome.problems == []
    else:
        assert expected in outcome.problems, outcome.report()


def test_peak_memory_is_measured(fuzz_root: Path) -> None:
    outcome = run_case(
        PROBE, fuzz_root, program=_python("import time; b = b'x' * (300 << 20); time.sleep(0.5)")
    )
    assert outcome.problems == []
    assert 300 << 20 < outcome.peak_rss < 600 << 20


def test_peak_memory_is_the_commands_own(fuzz_root: Path) -> None:
    """The harness's own memory (here 400 MiB more) does not show in a small command's peak."""
    ballast = b"x" * (400 << 20)
    outcome = run_case(PROBE, fuzz_root, program=_python("pass"))
    assert outcome.peak_rss < 100 << 20
    del ballast
