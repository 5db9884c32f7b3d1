"""Source patterns that cannot hang (openaddr.patterns; issue 10, item 2).

A pattern runs with ``re``'s semantics (processing.md §7.5), and no value may keep one pattern busy for longer than
``OPENADDR_PATTERN_TIMEOUT``: the match is stopped and the run records a named source problem.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from openaddr.acceptance import run_entry_tests
from openaddr.conform import Conform, convert_replacement
from openaddr.errors import ConformError, PatternTimeout
from openaddr.patterns import bounded_map, compile_pattern
from openaddr.settings import Settings, pattern_timeout
from openaddr.sources import load_source
from openaddr.validation import conform_errors

#: Hangs ``re`` for ever (and the ``regex`` module without its timeout): exponential backtracking.
CATASTROPHIC = r"(a+)+$"
CATASTROPHIC_VALUE = "a" * 40 + "!"
#: Hangs every backtracking engine, ``regex`` included (it defuses ``(a+)+$`` but not this one).
ALTERNATION = r"(a|aa)+$"
ALTERNATION_VALUE = "a" * 100_000 + "!"

BUDGET = 0.2

OPENADDR = [str(Path(sys.executable).with_name("openaddr"))]


def regexp_conform(pattern: str, replace: str | None = None, budget: float = BUDGET) -> Conform:
    spec: dict[str, Any] = {"function": "regexp", "field": "N", "pattern": pattern}
    if replace is not None:
        spec["replace"] = replace
    return Conform({"number": spec}, "addresses", label="xx/hostile addresses/primary", pattern_budget=budget)


# -- stopped, and named ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value"), [(CATASTROPHIC, CATASTROPHIC_VALUE), (ALTERNATION, ALTERNATION_VALUE)]
)
@pytest.mark.parametrize("replace", [None, "$1"])
def test_a_hanging_match_is_a_named_conform_error(pattern: str, value: str, replace: str | None) -> None:
    conform = regexp_conform(pattern, replace)
    with pytest.raises(PatternTimeout) as raised:
        conform.apply({"N": ["12", value, "13"]}, 3)
    message = str(raised.value)
    assert "xx/hostile addresses/primary" in message  # source and layer entry
    assert "attribute number" in message
    assert "field `N`" in message
    assert repr(pattern) in message
    assert "OPENADDR_PATTERN_TIMEOUT" in message
    assert raised.value.problem is not None
    assert raised.value.problem.value == "Could not conform source data"


def test_repeated_values_are_bounded_too() -> None:
    # 100 equal values take the distinct-values path of the conform.
    conform = regexp_conform(ALTERNATION)
    with pytest.raises(PatternTimeout):
        conform.apply({"N": [ALTERNATION_VALUE] * 100}, 100)


def test_the_run_goes_on_after_a_stopped_match() -> None:
    handler = signal.getsignal(signal.SIGALRM)  # not always the default: other tests run Airflow code
    timer = signal.getitimer(signal.ITIMER_REAL)
    conform = regexp_conform(ALTERNATION)
    with pytest.raises(PatternTimeout):
        conform.apply({"N": [ALTERNATION_VALUE]}, 1)
    assert conform.apply({"N": ["aaaa", "b"]}, 2)["number"] == ["a", ""]
    assert signal.getsignal(signal.SIGALRM) is handler
    if timer == (0.0, 0.0):
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_slow_values_under_the_budget_are_not_stopped() -> None:
    # Each value takes well under the budget; together they take longer than it.
    values = ["a" * 22 + "!"] * 3 + ["aaa"]
    pattern = compile_pattern(r"^(a|aa)+$")
    assert bounded_map(pattern.search, values, 5.0, lambda: "stopped")[-1] is not None


def test_someone_elses_timer_and_handler_are_given_back() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert bounded_map(str.upper, ["a", "b"], 1.0, lambda: "stopped") == ["A", "B"]
        delay, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < delay <= 30.0
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


def test_outside_the_main_thread_a_pattern_is_refused_not_run_unbounded() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            bounded_map(str.upper, ["a"], 1.0, lambda: "stopped")
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert [type(e) for e in errors] == [RuntimeError]


def test_an_acceptance_case_that_hangs_fails_with_the_reason(tmp_path: Path) -> None:
    path = write_source(tmp_path, ALTERNATION, "a" * 10_000 + "!")
    outcome = run_entry_tests(load_source(path).entries()[0])
    assert outcome.passed is False
    assert outcome.message is not None
    assert "the conform failed" in outcome.message
    assert repr(ALTERNATION) in outcome.message


# -- the budget setting ---------------------------------------------------------------------------------------


def test_budget_setting() -> None:
    assert pattern_timeout({}) == 1.0
    assert Settings.from_env({}).pattern_timeout == 1.0
    assert pattern_timeout({"OPENADDR_PATTERN_TIMEOUT": "0.25"}) == 0.25
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(ValueError, match="OPENADDR_PATTERN_TIMEOUT"):
            pattern_timeout({"OPENADDR_PATTERN_TIMEOUT": bad})


def test_the_conform_reads_the_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENADDR_PATTERN_TIMEOUT", "0.3")
    assert Conform({}, "addresses").pattern_budget == 0.3


# -- compiling ------------------------------------------------------------------------------------------------


def test_patterns_are_compiled_once() -> None:
    assert compile_pattern(r"^(\d+)\s") is compile_pattern(r"^(\d+)\s")


@pytest.mark.parametrize("pattern", ["a{4294967296}", "(" * 3000 + "a" + ")" * 3000, "(", r"\p{L}"])
def test_what_re_cannot_compile_is_an_invalid_pattern(pattern: str) -> None:
    with pytest.raises(re.error):
        compile_pattern(pattern)
    with pytest.raises(ConformError, match="Invalid regular expression"):
        regexp_conform(pattern)
    document = {
        "schema": 2,
        "coverage": {"country": "xx"},
        "layers": {
            "addresses": [
                {
                    "name": "primary",
                    "conform": {"number": {"function": "regexp", "field": "N", "pattern": pattern}},
                }
            ]
        },
    }
    (issue,) = conform_errors(document)
    assert "invalid regular expression" in issue.message


# -- the same results as re -----------------------------------------------------------------------------------

#: Non-ASCII digits and spaces, a trailing newline before ``$``, and the characters where other engines' ``\w``,
#: ``\s`` and ``\d`` differ from ``re``'s (``benchmarks/bench_patterns.py``).
PROBES = [
    "١٢٣ Main St",
    "१२३ MG Road",
    "１２３ Main St",
    "123\u00a0Main St",
    "123\u2003Main\u3000St",
    "123 Main St\n",
    "12345-6789\n",
    "line1\nline2",
    "12½ Main St",
    "Flat 2³",
    "Cafe\u0301 Street 5",
    "123\x1cMain St",
    "A\u200dB 7",
    "Straße 12",
    "\u212a 12",
    "",
    " ",
    "123-1/2 MAIN ST UNIT 3B",
    "ул. Ленина, д. 5, кв. 12",
    "Nám. Míru 12/3, Praha",
]


def _corpus(corpus: Path) -> tuple[set[tuple[str, str | None]], set[str]]:
    pairs: set[tuple[str, str | None]] = set()
    inputs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("function") == "regexp" and isinstance(node.get("pattern"), str):
                replace = node.get("replace")
                pairs.add((node["pattern"], replace if isinstance(replace, str) and replace else None))
            tests = node.get("acceptance-tests")
            for case in tests if isinstance(tests, list) else []:
                for value in (case.get("inputs") or {}).values():
                    inputs.add(value if isinstance(value, str) else "" if value is None else str(value))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in corpus.rglob("*.json"):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return pairs, inputs


def _reference(pattern: str, replace: str | None, value: str) -> str:
    """Today's result: ``re`` straight, as processing.md §7.5 describes it."""
    compiled = re.compile(pattern)
    if replace is not None:
        return compiled.sub(convert_replacement(replace), value)
    match = compiled.search(value)
    return "".join(g or "" for g in match.groups()) if match else ""


def test_every_corpus_pattern_gives_res_results(corpus_sources: Path) -> None:
    pairs, inputs = _corpus(corpus_sources)
    assert len({p for p, _ in pairs}) >= 300
    assert len(inputs) >= 280
    digits = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    values = sorted(inputs) + PROBES
    values += (
        [v + "\n" for v in inputs]
        + [v.replace(" ", "\u00a0") for v in inputs]
        + [v.translate(digits) for v in inputs]
    )
    differing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # re's "possible nested set" on a few corpus patterns
        for pattern, replace in sorted(pairs, key=lambda pair: (pair[0], pair[1] or "")):
            got = regexp_conform(pattern, replace, budget=5.0).apply({"N": values}, len(values))["number"]
            want = [_reference(pattern, replace, value) for value in values]
            differing += [(pattern, v) for v, g, w in zip(values, got, want, strict=True) if g != w]
    assert differing == []


# -- through the command line, in a subprocess with a timeout -------------------------------------------------


def write_source(tmp_path: Path, pattern: str, test_value: str | None = None) -> Path:
    entry: dict[str, Any] = {
        "name": "primary",
        "data": "http://example.com/data.csv",
        "protocol": "http",
        "conform": {
            "format": "csv",
            "lon": "X",
            "lat": "Y",
            "number": {"function": "regexp", "field": "N", "pattern": pattern},
            "street": "S",
        },
    }
    if test_value is not None:
        entry["test"] = {
            "description": "a hostile pattern",
            "enabled": True,
            "acceptance-tests": [
                {
                    "description": "hangs",
                    "inputs": {"N": test_value, "S": "MAIN ST"},
                    "expected": {"number": ""},
                }
            ],
        }
    document = {"schema": 2, "coverage": {"country": "xx"}, "layers": {"addresses": [entry]}}
    path = tmp_path / "xx" / "hostile.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENADDR_PATTERN_TIMEOUT": str(BUDGET), "TMPDIR": str(tmp_path)}
    # The subprocess timeout only keeps a regression from hanging the suite; it asserts nothing about speed.
    return subprocess.run(
        [*OPENADDR, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


# A source file's strings are at most 100,000 characters (the trust boundary): the acceptance input is shorter.
@pytest.mark.parametrize(
    ("pattern", "value"), [(CATASTROPHIC, CATASTROPHIC_VALUE), (ALTERNATION, "a" * 10_000 + "!")]
)
def test_cli_test_source_ends_with_the_named_problem(tmp_path: Path, pattern: str, value: str) -> None:
    source = write_source(tmp_path, pattern, value)
    result = run_cli(["test-source", str(source)], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "0 passed, 1 failed"
    assert "addresses/primary" in lines[0]
    assert repr(pattern) in lines[0]
    assert "field `N`" in lines[0]
    assert "OPENADDR_PATTERN_TIMEOUT" in lines[0]


@pytest.mark.parametrize("rows", [3, 60_000])  # in-process, and in the forked conform workers
def test_cli_conform_ends_with_the_named_problem(tmp_path: Path, rows: int) -> None:
    source = write_source(tmp_path, ALTERNATION)
    data = tmp_path / "data.csv"
    lines = ["X,Y,N,S"] + [f"-122.{i % 1000:03d},37.5,{i},MAIN ST" for i in range(rows - 1)]
    lines.insert(rows // 2 + 1, f"-122.1,37.5,{ALTERNATION_VALUE},MAIN ST")
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli(["conform", str(source), str(data), "--layer", "addresses", "--out", str(out)], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    keys, values = json.loads((out / "index.json").read_text(encoding="utf-8"))
    state = dict(zip(keys, values, strict=True))
    assert state["source problem"] == "Could not conform source data"
    log = (out / "output.txt").read_text(encoding="utf-8")
    (line,) = [line for line in log.splitlines() if "OPENADDR_PATTERN_TIMEOUT" in line]
    assert "WARNING" in line
    assert "addresses/primary" in line
    assert "field `N`" in line
    assert repr(ALTERNATION) in line
    assert not (out / "out.csv").exists()


def test_a_hanging_coordinate_regexp_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openaddr.readers.csvfile import CsvReader

    monkeypatch.setenv("OPENADDR_PATTERN_TIMEOUT", str(BUDGET))
    data = tmp_path / "data.csv"
    data.write_text(f"x,y,N\n-122.1,37.5,1\n{ALTERNATION_VALUE},37.5,2\n", encoding="utf-8")
    lon = {"function": "regexp", "field": "x", "pattern": ALTERNATION}
    reader = CsvReader(data, {"format": "csv", "lon": lon, "lat": "y"}, label="xx/hostile addresses/primary")
    with pytest.raises(PatternTimeout) as raised:
        list(reader.batches(batch_size=10))
    message = str(raised.value)
    assert "xx/hostile addresses/primary" in message
    assert "field `x` of lon" in message
    assert repr(ALTERNATION) in message


def test_a_built_in_pattern_on_a_hostile_value_is_bounded_too() -> None:
    # postfixed_street's own pattern backtracks for seconds on a few thousand spaces, for hours on a long field.
    spec = {"function": "postfixed_street", "field": "S", "may_contain_units": True}
    conform = Conform(
        {"street": spec}, "addresses", label="xx/hostile addresses/primary", pattern_budget=BUDGET
    )
    assert conform.apply({"S": ["12 MAIN ST APT 4"]}, 1)["street"] == ["MAIN ST"]
    with pytest.raises(PatternTimeout, match="The postfixed_street function on field `S`"):
        conform.apply({"S": [" " * 100_000 + "x"]}, 1)


def test_any_iterable_of_values_is_matched_with_its_progress_seen() -> None:
    # A generator has no remaining length; it is made a list first, so progress is still seen at every tick and
    # a long column of quick matches is never mistaken for one slow match.
    values = (str(n) for n in range(300_000))
    pattern = compile_pattern(r"^(\d+)$")
    result = bounded_map(lambda v: pattern.sub(r"\1\1", v), values, 0.05, lambda: "stopped")
    assert result[-1] == "299999299999"
