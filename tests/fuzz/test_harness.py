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

pytestmark = pytest.mark.fuzz


def test_unmodified_bases_pass(fuzz_root: Path) -> None:
    """Every base as it is: conform and process-one succeed, validate and test-source accept real corpus files."""
    cases = [conform_case("control", runnable, "unmodified") for runnable in RUNNABLES]
    cases += [process_one_case("control", r, "unmodified") for r in RUNNABLES if r.name in PROCESS_ONE]
    for command in ("validate", "test-source"):
        for base in corpus_files_with_tests()[:3]:
            cases.append(source_case("control", command, base, "unmodified", read_shared(base)))
    outcomes = run_cases(cases, fuzz_root)
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


def test_memory_and_time_are_measured(fuzz_root: Path) -> None:
    outcome = run_case(
        PROBE, fuzz_root, program=_python("import time; b = b'x' * (300 << 20); time.sleep(0.5)")
    )
    assert outcome.problems == []
    assert 300 << 20 < outcome.peak_rss < 600 << 20
    assert outcome.seconds >= 0.5
