"""Acceptance tests of layer entries and ``openaddr test-source`` (processing.md §12)."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from openaddr import acceptance
from openaddr.cli import main
from openaddr.sources import load_source

if TYPE_CHECKING:
    from pathlib import Path


def run(paths: list[Path | str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = acceptance.test_source_command([str(p) for p in paths], out=out)
    return code, out.getvalue().splitlines()


def write_source(
    tmp_path: Path, entry: dict[str, Any], layer: str = "addresses", name: str = "xx.json"
) -> Path:
    document = {"schema": 2, "coverage": {"country": "xx"}, "layers": {layer: [{"name": "primary", **entry}]}}
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def entry_of(path: Path) -> Any:
    return load_source(path).entries()[0]


# -- the corpus -----------------------------------------------------------------------------------------------


def test_every_corpus_case_passes(corpus_sources: Path) -> None:
    code, lines = run([corpus_sources])
    assert lines == ["132 passed, 0 failed"]
    assert code == 0


def test_cli_over_the_corpus(corpus_sources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-source", str(corpus_sources)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "132 passed, 0 failed"


@pytest.mark.parametrize(
    ("path", "cases"),
    [
        ("us/pa/philadelphia.json", 11),  # a chain reads its variable before any step wrote it
        ("us/tx/galveston.json", 4),  # inputs are lower case, the conform names upper case
        ("cz/countrywide.json", 10),
    ],
)
def test_corpus_entries(corpus_sources: Path, path: str, cases: int) -> None:
    outcome = acceptance.run_entry_tests(entry_of(corpus_sources / path))
    assert (outcome.passed, outcome.cases_passed, outcome.cases_failed, outcome.message) == (
        True,
        cases,
        0,
        None,
    )


# -- the cz-countrywide fixtures ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cz-countrywide-good-tests.json", "cz-countrywide-implied-tests.json"])
def test_good_and_implied_tests_pass(fixtures: Path, name: str) -> None:
    outcome = acceptance.run_entry_tests(entry_of(fixtures / "sources" / name))
    assert (outcome.passed, outcome.cases_passed, outcome.cases_failed) == (True, 7, 0)
    assert outcome.failures == []


@pytest.mark.parametrize("name", ["cz-countrywide-disabled-tests.json", "cz-countrywide-no-tests.json"])
def test_disabled_and_absent_tests_do_not_run(fixtures: Path, name: str) -> None:
    outcome = acceptance.run_entry_tests(entry_of(fixtures / "sources" / name))
    assert (outcome.passed, outcome.cases_passed, outcome.cases_failed, outcome.message) == (None, 0, 0, None)


def test_bad_tests_fail_with_the_first_difference(fixtures: Path) -> None:
    path = fixtures / "sources" / "cz-countrywide-bad-tests.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    cases = document["test"]["acceptance-tests"]
    # The bad conform maps number, street, city and postcode all to the column "alternativ".
    first = cases[0]
    value = first["inputs"]["alternativ"]
    got = dict.fromkeys(first["expected"], value.strip())
    expected_message = (
        f"A source test failed: For `{first['description']}`, "
        f"expected `{json.dumps(first['expected'], ensure_ascii=False)}` "
        f"but got `{json.dumps(got, ensure_ascii=False)}`"
    )
    outcome = acceptance.run_entry_tests(entry_of(path))
    assert outcome.passed is False
    assert (outcome.cases_passed, outcome.cases_failed) == (0, len(cases))
    assert outcome.message == expected_message
    assert outcome.failures[0] == expected_message
    assert "Jiřská" in outcome.message  # no ASCII escaping


def test_fixture_folder_counts_cases(fixtures: Path) -> None:
    names = [f"cz-countrywide-{kind}-tests.json" for kind in ("good", "bad", "implied", "disabled", "no")]
    code, lines = run([fixtures / "sources" / name for name in names])
    assert code == 1
    assert lines[-1] == "14 passed, 7 failed"
    failures = lines[:-1]
    assert len(failures) == 7
    assert all(
        line.startswith(f"{fixtures / 'sources' / names[1]} addresses/primary: A source test")
        for line in failures
    )


# -- comparison rules -----------------------------------------------------------------------------------------


def one_case(
    tmp_path: Path, conform: dict[str, Any], inputs: dict[str, Any], expected: dict[str, Any]
) -> Any:
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "case", "inputs": inputs, "expected": expected}],
    }
    return acceptance.run_entry_tests(entry_of(write_source(tmp_path, {"conform": conform, "test": test})))


@pytest.mark.parametrize(
    ("conform", "inputs", "expected"),
    [
        ({"number": "N"}, {"N": " 324.0 "}, {"number": "324"}),  # §8.1 on number
        ({"street": ["A", "B"]}, {"A": " Main", "B": "St  "}, {"street": "Main St"}),  # trimmed
        ({"unit": "U"}, {}, {"unit": ""}),  # missing field: null equals ""
        ({"city": "C"}, {}, {"city": ""}),
        ({"city": "C"}, {"c": "Oakland"}, {"CITY": "Oakland"}),  # keys match attributes case-insensitively
        ({"city": "C"}, {"C": " x "}, {"city": " x "}),  # city is not trimmed
        ({"number": "N"}, {"N": 12}, {"number": 12}),  # compared as strings
        ({"number": "N"}, {"N": "1"}, {"number": "1", "hash": "whatever"}),  # hash is never compared
        ({"accuracy": 2, "number": "N"}, {"N": "1"}, {"accuracy": "2"}),
    ],
)
def test_case_passes(
    tmp_path: Path, conform: dict[str, Any], inputs: dict[str, Any], expected: dict[str, Any]
) -> None:
    outcome = one_case(tmp_path, conform, inputs, expected)
    assert (outcome.passed, outcome.message) == (True, None)


@pytest.mark.parametrize(
    ("conform", "inputs", "expected", "got"),
    [
        ({"number": "N"}, {"N": "1"}, {"number": "2"}, {"number": "1"}),
        ({"city": "C"}, {"C": "x"}, {"city": None, "region": "y"}, {"city": "x", "region": ""}),
        ({"number": "N"}, {"N": "1"}, {"Number": "1", "street": "S"}, {"Number": "1", "street": ""}),
    ],
)
def test_case_fails(
    tmp_path: Path,
    conform: dict[str, Any],
    inputs: dict[str, Any],
    expected: dict[str, Any],
    got: dict[str, Any],
) -> None:
    outcome = one_case(tmp_path, conform, inputs, expected)
    assert outcome.passed is False
    assert outcome.message == (
        f"A source test failed: For `case`, expected `{json.dumps(expected)}` but got `{json.dumps(got)}`"
    )


def test_case_without_description_is_named_by_index(tmp_path: Path) -> None:
    cases = [
        {"inputs": {"N": "1"}, "expected": {"number": "1"}},
        {"inputs": {"N": "1"}, "expected": {"number": "9"}},
    ]
    path = write_source(tmp_path, {"conform": {"number": "N"}, "test": {"acceptance-tests": cases}})
    outcome = acceptance.run_entry_tests(entry_of(path))
    assert outcome.message is not None
    assert outcome.message.startswith("A source test failed: For `test 1`, expected")
    assert (outcome.cases_passed, outcome.cases_failed) == (1, 1)


def test_conform_that_does_not_compile_fails_every_case(tmp_path: Path) -> None:
    conform = {"number": {"function": "no_such_function", "field": "N"}}
    outcome = one_case(tmp_path, conform, {"N": "1"}, {"number": "1"})
    assert outcome.passed is False
    assert outcome.cases_failed == 1
    assert outcome.message is not None
    assert outcome.message.startswith("A source test failed: For `case`, the conform failed:")
    assert "Unknown conform function `no_such_function`" in outcome.message


def test_non_address_layer(tmp_path: Path) -> None:
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "p", "inputs": {"PIN": " 7.0 "}, "expected": {"pid": " 7.0 "}}],
    }
    outcome = acceptance.run_entry_tests(
        entry_of(write_source(tmp_path, {"conform": {"pid": "PIN"}, "test": test}, "parcels"))
    )
    assert outcome.passed is True


def test_no_cases_means_not_run(tmp_path: Path) -> None:
    path = write_source(
        tmp_path, {"conform": {"number": "N"}, "test": {"description": "t", "acceptance-tests": []}}
    )
    assert acceptance.run_entry_tests(entry_of(path)).passed is None


# -- the command ----------------------------------------------------------------------------------------------


def test_broken_files_are_reported_and_fail_the_command(tmp_path: Path, corpus_sources: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    code, lines = run([broken, corpus_sources / "us" / "tx" / "galveston.json"])
    assert code == 1
    assert lines[-1] == "4 passed, 0 failed"
    assert len(lines) == 2
    assert str(broken) in lines[0]


def test_nothing_readable_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[]", encoding="utf-8")
    code, lines = run([broken, tmp_path / "missing.json"])
    assert code == 2
    assert lines[-1] == "0 passed, 0 failed"
    assert len(lines) == 3


def test_failure_lines_name_path_layer_entry_and_case(tmp_path: Path) -> None:
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "c1", "inputs": {"N": "1"}, "expected": {"number": "2"}}],
    }
    path = write_source(tmp_path, {"conform": {"number": "N"}, "test": test})
    code, lines = run([tmp_path])
    assert code == 1
    assert lines == [
        f'{path} addresses/primary: A source test failed: For `c1`, expected `{{"number": "2"}}` '
        f'but got `{{"number": "1"}}`',
        "0 passed, 1 failed",
    ]


def test_unexpected_conform_error_is_a_failed_case_not_a_traceback(tmp_path: Path) -> None:
    # A layerless (v1) file is validated in advisory mode: a function name that is a list is only a schema
    # warning there, and compiling the conform raises TypeError. It must count as a failure of that entry.
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "c1", "inputs": {"N": "1"}, "expected": {"number": "1"}}],
    }
    path = tmp_path / "v1.json"
    document = {"coverage": {"country": "xx"}, "conform": {"number": {"function": ["join"]}}, "test": test}
    path.write_text(json.dumps(document), encoding="utf-8")
    assert not load_source(path).strict
    code, lines = run([path])
    assert code == 1
    assert lines == [
        f"{path} addresses/primary: A source test failed: unexpected TypeError: unhashable type: 'list'",
        "0 passed, 1 failed",
    ]


def test_unsafe_file_runs_no_case(tmp_path: Path) -> None:
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "c1", "inputs": {"N": "1"}, "expected": {"number": "1"}}],
    }
    path = write_source(tmp_path, {"conform": {"number": "N"}, "test": test})
    document = json.loads(path.read_text(encoding="utf-8"))
    document["layers"]["addresses"][0]["name"] = "../x"
    path.write_text(json.dumps(document), encoding="utf-8")
    code, lines = run([path])
    assert code == 1
    assert lines == [
        f"{path}: addresses/unnamed-1: Unsafe: layers.addresses[0].name: '../x' is not a safe name: it must match "
        "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        "0 passed, 0 failed",
    ]
