"""Acceptance tests of layer entries (processing.md §12) and ``openaddr test-source``.

A layer entry may carry ``test: {description, enabled, acceptance-tests: [{description, inputs, expected}]}``.
Each case's ``inputs`` is one source row; it goes through the conform (§7) and the number/street/unit rules of
§8.1, and the attributes named in ``expected`` must come out equal, as strings.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from openaddr.canonical import canonical_number, canonical_text
from openaddr.conform import Conform
from openaddr.errors import ConformError, SourceFileError, SourceUnreadableError
from openaddr.sources import iter_source_files, load_source

if TYPE_CHECKING:
    from openaddr.sources import LayerEntry, Source
    from openaddr.validation import SchemaIssue

log = logging.getLogger(__name__)

#: Prefix of every failure message; 7.5.5's text rule for ``test_failed`` looks for it (§10.2).
FAILURE_PREFIX = "A source test failed"

# Canonicalisation of §8.1 that acceptance cases see (address layers only); other attributes are compared as they
# come out of the conform.
_ADDRESS_CANONICAL = {"number": canonical_number, "street": canonical_text, "unit": canonical_text}


@dataclass
class TestOutcome:
    """The result of an entry's acceptance tests.

    :param passed: True when every case passed, False when one failed, None when there is nothing to run (no
        test block, no cases, or ``enabled: false``)
    :param cases_passed: number of cases that passed
    :param cases_failed: number of cases that failed
    :param message: the first failure, as logged: "A source test failed: For …, expected … but got …"
    :param failures: every failure message, in case order
    """

    __test__ = False  # not a pytest test class

    passed: bool | None
    cases_passed: int = 0
    cases_failed: int = 0
    message: str | None = None
    failures: list[str] = field(default_factory=list)


def _input_text(value: Any) -> str:
    """A JSON input value as the text a reader would have produced (§6.1)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _expected_text(value: Any) -> str:
    """An expected JSON value as the string it is compared as; null equals ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _case_name(case: Mapping[str, Any], index: int) -> str:
    description = case.get("description")
    return description if isinstance(description, str) and description else f"test {index}"


def _failure(name: str, expected: Any, actual: Any) -> str:
    return (
        f"{FAILURE_PREFIX}: For `{name}`, expected `{json.dumps(expected, ensure_ascii=False)}` "
        f"but got `{json.dumps(actual, ensure_ascii=False)}`"
    )


def run_case(conform: Conform, case: Mapping[str, Any], index: int) -> str | None:
    """Run one acceptance case; return None when it passes, else the failure message.

    :param conform: the entry's compiled conform
    :param case: ``{description, inputs, expected}``
    :param index: the case's 0-based position, which names it when it has no description
    """
    inputs = case.get("inputs")
    expected = case.get("expected")
    inputs = inputs if isinstance(inputs, Mapping) else {}
    expected = expected if isinstance(expected, Mapping) else {}
    columns = {str(key): [_input_text(value)] for key, value in inputs.items()}
    result = conform.apply(columns, 1)
    canonical = _ADDRESS_CANONICAL if conform.layer_type == "addresses" else {}
    shown_expected: dict[str, Any] = {}
    actual: dict[str, str] = {}
    ok = True
    for key, value in expected.items():
        attribute = str(key).lower()
        if attribute == "hash":
            continue  # its seed is random here (§12)
        column = result.get(attribute)
        got = column[0] if column is not None else None
        if attribute in canonical:
            got = canonical[attribute](got)
        got_text = "" if got is None else got
        shown_expected[key] = value
        actual[key] = got_text
        ok = ok and got_text == _expected_text(value)
    if ok:
        return None
    return _failure(_case_name(case, index), shown_expected, actual)


def run_entry_tests(entry: LayerEntry) -> TestOutcome:
    """Run the acceptance tests of one layer entry (§12).

    Every case runs; :attr:`TestOutcome.message` is the first failure, which ends the entry in processing. A
    conform that cannot be compiled fails every case, with the reason in the message.
    """
    test = entry.data.get("test")
    if not isinstance(test, Mapping) or not test.get("enabled", True):
        return TestOutcome(None)
    cases = [case for case in test.get("acceptance-tests") or [] if isinstance(case, Mapping)]
    if not cases:
        return TestOutcome(None)
    outcome = TestOutcome(True)
    try:
        conform = Conform(entry.conform or {}, entry.layer, label=entry.label, warn_missing=False)
    except ConformError as exc:
        for index, case in enumerate(cases):
            outcome.failures.append(
                f"{FAILURE_PREFIX}: For `{_case_name(case, index)}`, the conform failed: {exc}"
            )
    else:
        for index, case in enumerate(cases):
            try:
                failure = run_case(conform, case, index)
            except ConformError as exc:  # a pattern over its time budget (openaddr.patterns)
                failure = f"{FAILURE_PREFIX}: For `{_case_name(case, index)}`, the conform failed: {exc}"
            if failure is None:
                outcome.cases_passed += 1
            else:
                outcome.failures.append(failure)
    outcome.cases_failed = len(outcome.failures)
    if outcome.failures:
        outcome.passed = False
        outcome.message = outcome.failures[0]
    return outcome


def test_source_command(paths: list[str], out: TextIO | None = None) -> int:  # noqa: PT028 (a command, not a test)
    """``openaddr test-source PATH...``: run the acceptance tests of every layer entry of the named files.

    Prints one line per failed case (source path, layer, entry name, case, difference) and ends with
    ``N passed, M failed`` counting cases. A file whose tests cannot run safely — broken JSON, over a limit of
    :func:`openaddr.sources.load_source`, an ``Unsafe`` or ``Conform`` problem, or (``schema: 2`` files) a
    schema error inside a ``conform`` attribute or the ``test`` object — gets one line and none of its cases
    run: a source file is untrusted data until it validates.

    :param paths: source files and folders (every ``*.json`` below a folder)
    :param out: where to print; standard output by default
    :return: 0 when every case passed, 1 when one failed or a file is invalid, 2 when a path names no readable
        file or nothing could be read
    """
    from openaddr.validation import describe_issue, source_issues

    stream = out if out is not None else sys.stdout
    passed = failed = read = invalid = unreadable = 0
    for path in iter_source_files(paths):
        try:
            source = load_source(path)
        except SourceUnreadableError as exc:
            unreadable += 1
            stream.write(f"{exc}\n")
            continue
        except SourceFileError as exc:
            invalid += 1
            stream.write(f"{exc}\n")
            continue
        read += 1
        fatal = [issue for issue in source_issues(source) if _blocks_tests(source, issue)]
        if fatal:
            invalid += 1
            more = f" (and {len(fatal) - 1} more problems)" if len(fatal) > 1 else ""
            stream.write(f"{describe_issue(source, fatal[0])}{more}\n")
            continue
        for entry in source.entries():
            try:
                outcome = run_entry_tests(entry)
            except Exception as exc:  # a conform the checks let through must not end the command
                text = " ".join(str(exc).split())[:200]
                outcome = TestOutcome(
                    False, failures=[f"{FAILURE_PREFIX}: unexpected {type(exc).__name__}: {text}"]
                )
                outcome.cases_failed = 1
            passed += outcome.cases_passed
            failed += outcome.cases_failed
            for failure in outcome.failures:
                stream.write(f"{path} {entry.layer}/{entry.name}: {failure}\n")
    stream.write(f"{passed} passed, {failed} failed\n")
    if unreadable or not (read or invalid):
        return 2
    return 1 if failed or invalid else 0


def _blocks_tests(source: Source, issue: SchemaIssue) -> bool:
    """Whether a validation problem keeps a file's acceptance tests from running (see :func:`test_source_command`)."""
    if issue.kind in ("Unsafe", "Conform"):
        return True
    parts = issue.parts
    # Inside a conform attribute or the test object: what the tests execute (a missing key is not).
    return source.strict and len(parts) >= 5 and parts[0] == "layers" and parts[3] in ("conform", "test")


# pytest collects module-level callables named test_*; this one is a command, not a test.
test_source_command.__test__ = False  # type: ignore[attr-defined]  # an attribute pytest reads off functions
