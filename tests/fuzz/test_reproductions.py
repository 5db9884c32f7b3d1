"""Each reproduction of issue 10, as one fixed fuzz case through the same harness.

The random cases of ``test_fuzz.py`` cover the kinds; these pin the exact inputs the issue reports, one test id each,
so the integrator sees which are still open. All cases run at once (in parallel) in a session fixture; each test
reads its own outcome. Beyond the harness's properties some carry the exit code issue 10 promises: a source the
validator must reject is exit 1, a missing file or ``--out`` that is a file is exit 2.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from tests.fuzz.cases import (
    CASE,
    RUNNABLE,
    Case,
    Raw,
    Special,
    conform_case,
    cut_dbf,
    cut_inside,
    dumps,
    load,
    nested,
    process_one_case,
    read_shared,
    source_case,
    v2_document,
    with_file_url,
    zip_bytes,
    zip_members,
)
from tests.fuzz.harness import run_cases
from tests.fuzz.strategies import _rewrite_csv, _trumbull_shapefile

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.fuzz.harness import Outcome

pytestmark = pytest.mark.fuzz

#: A real corpus source with acceptance tests, the base of the validator reproductions.
CORPUS_BASE = "corpus/sources/us/ct/city_of_haddam.json"


def _corpus(mutate: Callable[[dict[str, Any]], Any] | None) -> bytes:
    doc = load(CORPUS_BASE)
    if mutate is None:  # the one document-level reproduction: layers as a list
        doc["layers"] = []
    else:
        mutate(doc["layers"]["addresses"][0])
    return dumps(doc)


def _invalid(what: str, mutate: Callable[[dict[str, Any]], Any] | None, command: str) -> Case:
    """``validate`` must say invalid (exit 1); ``test-source`` may exit 0, 1 or 2 but must not crash."""
    case = source_case("reproduction", command, CORPUS_BASE, what, _corpus(mutate))
    return replace(case, expect_exit=(1,)) if command == "validate" else case


def _conform(entry: dict[str, Any], key: str, value: Any) -> None:
    entry["conform"][key] = value


def _named(name: str, *, decoys: bool = False) -> Case:
    runnable = RUNNABLE["jp-nara"]
    doc = with_file_url(v2_document(runnable, name), runnable.argument)
    files: dict[str, bytes | Special] = dict(runnable.input_files())
    if decoys:
        files |= {"out.csv": b"decoy\n", "stats.json": b"{}", "x.zip": b"decoy"}
    return process_one_case("reproduction", runnable, f"name {name[:30]!r}", doc=doc, files=files)


def _regex_test_source(pattern: str, subject: str) -> Case:
    def mutate(entry: dict[str, Any]) -> None:
        field = next(iter(entry["test"]["acceptance-tests"][0]["inputs"]))
        for test in entry["test"]["acceptance-tests"]:
            test["inputs"][field] = subject
        entry["conform"]["street"] = {"function": "regexp", "field": field, "pattern": pattern}

    return source_case("reproduction", "test-source", CORPUS_BASE, f"pattern {pattern}", _corpus(mutate))


def _regex_conform(pattern: str, subject: str) -> Case:
    runnable = RUNNABLE["lake-man-split2"]
    doc = runnable.document()
    doc["conform"]["number"]["pattern"] = pattern
    data = _rewrite_csv(runnable.input_files()["lake-man-split2.csv"], "MAILSTREET", subject)
    return conform_case(
        "reproduction", runnable, f"pattern {pattern}", doc=doc, files={"lake-man-split2.csv": data}
    )


def _nested_geojson(depth: int) -> Case:
    runnable = RUNNABLE["bucks"]
    collection = load("fixtures/machine/data/us-pa-bucks.geojson")
    collection["features"][0]["properties"]["SITUS_FNAME"] = nested(depth, "dict")
    return conform_case(
        "reproduction",
        runnable,
        f"{depth} nested properties",
        files={RUNNABLE["bucks"].argument: dumps(collection)},
    )


def _huge_csv_field(megabytes: int) -> Case:
    runnable = RUNNABLE["lake-man-split2"]
    lines = runnable.input_files()["lake-man-split2.csv"].splitlines(keepends=True)
    lines[0] = b"HUGE," + lines[0]
    lines[1:] = [b"x," + line for line in lines[1:]]
    lines[1] = b'"' + b"7" * (megabytes << 20) + b'"' + lines[1][1:]
    return conform_case(
        "reproduction", runnable, f"one {megabytes} MiB field", files={"lake-man-split2.csv": b"".join(lines)}
    )


def _output_cap() -> Case:
    runnable = RUNNABLE["iceland"]
    members = zip_members(runnable.input_files()["iceland.zip"])
    header, *rows = members[0][1].splitlines(keepends=True)
    data = zip_bytes([(members[0][0], header + b"".join(rows) * 2000)])
    case = conform_case(
        "reproduction", runnable, "8 MB of rows, OPENADDR_MAX_OUTPUT_BYTES=1 MiB", files={"iceland.zip": data}
    )
    return replace(case, env={"OPENADDR_MAX_OUTPUT_BYTES": str(1 << 20)}, expect_exit=(1,))


def _shapefile(cut: str) -> Case:
    if cut == "trumbull":
        runnable, files = _trumbull_shapefile()
        files["TRU_ADDS.dbf"] = cut_dbf(files["TRU_ADDS.dbf"], 1 / 3)
        what = ".dbf cut to a third"
    else:
        runnable = RUNNABLE["lake-man"]
        files = runnable.input_files()
        files["lake-man.dbf"] = cut_dbf(files["lake-man.dbf"], 0.5)
        what = ".dbf cut in half"
    case = conform_case(
        "reproduction", runnable, what, files=files, argument=runnable.argument, must_fail=True
    )
    return case


def _truncated_geojson() -> Case:
    data = read_shared("fixtures/machine/data/us-pa-bucks.geojson")
    return conform_case(
        "reproduction",
        RUNNABLE["bucks"],
        "ends at half",
        files={RUNNABLE["bucks"].argument: data[: len(data) // 2]},
        must_fail=True,
    )


def _truncated_member() -> Case:
    runnable = RUNNABLE["us-wy-park"]
    data = runnable.input_files()["us-wy-park.zip"]
    return conform_case(
        "reproduction",
        runnable,
        "zip cut at 60 %",
        files={"us-wy-park.zip": cut_inside(data, 0.6)},
        must_fail=True,
    )


def _usage(command: str, what: str) -> Case:
    runnable = RUNNABLE["jp-nara"]
    files: dict[str, bytes | Special] = {
        **runnable.input_files(),
        "source.json": dumps(with_file_url(runnable.document(), runnable.argument)),
    }
    args: tuple[str, ...] = ("{in}/source.json",)
    if command == "conform":
        args += ("{in}/jp-nara.csv", "--layer", "addresses", "--out", "{out}")
    elif command == "process-one":
        args += ("--out", "{out}")
    expect: tuple[int, ...] = (2,)
    if what == "FIFO source":
        files["source.json"] = Special.FIFO
        expect = (1, 2)
    elif what == "FIFO input":
        files["jp-nara.csv"] = Special.FIFO
        expect = (1, 2)
    elif what == "missing source":
        del files["source.json"]
    base = "fixtures/machine/conforms/jp-nara.json"
    return Case(
        "reproduction",
        command,
        base,
        what,
        files,
        args,
        out_is_file=what == "--out a file",
        expect_exit=expect,
    )


#: What the validator must reject (exit 1, a named error, no traceback), each run through ``validate`` and
#: ``test-source``: id → (what, mutation of the first addresses entry, or of the document for ``layers``).
REJECTED: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "name-dotdot": ("name ../../x", lambda e: e.update(name="../../x")),
    "name-absolute": ("name /abs/dir", lambda e: e.update(name="/abs/dir")),
    "name-nul": ("name a\\x00b", lambda e: e.update(name="a\x00b")),
    "nesting-600": ("600 nested objects", lambda e: _conform(e, "street", nested(600, "dict"))),
    "int-4301-digits": (
        "a 4,301-digit integer",
        lambda e: _conform(e, "accuracy", Raw("1" * 4301, "4301 digits")),
    ),
    "repeat-overflow": (
        "a{4294967296}",
        lambda e: _conform(e, "street", {"function": "regexp", "field": "x", "pattern": "a{4294967296}"}),
    ),
    "3000-parentheses": (
        "3,000 nested parentheses",
        lambda e: _conform(
            e, "street", {"function": "regexp", "field": "x", "pattern": "(" * 3000 + ")" * 3000}
        ),
    ),
    "layers-list": ("layers a list", None),  # type: ignore[dict-item]  # the document's layers (see _corpus)
    "function-list": (
        '"function": ["join"]',
        lambda e: _conform(e, "street", {"function": ["join"], "fields": ["a", "b"]}),
    ),
    "chain-functions-not-list": (
        "chain.functions a string",
        lambda e: _conform(e, "street", {"function": "chain", "variable": "v", "functions": "remove_prefix"}),
    ),
    "acceptance-tests-not-list": (
        "acceptance-tests an object",
        lambda e: e["test"].update({"acceptance-tests": {"a": 1}}),
    ),
    "surrogate-in-expected": (
        "a lone surrogate in expected",
        lambda e: e["test"]["acceptance-tests"][0]["expected"].update(street="\ud800"),
    ),
    "encoding-rot13": ("encoding rot13", lambda e: _conform(e, "encoding", "rot13")),
    "srs-5000-digits": ("srs EPSG:<5000 digits>", lambda e: _conform(e, "srs", "EPSG:" + "9" * 5000)),
}


#: id → the case (built lazily: the bases are read from ../shared).
REPRODUCTIONS: dict[str, Callable[[], Case]] = {
    # 1. the trust boundary: names that are paths, and what the validator crashes on
    "name-dotdot-process-one": lambda: _named("../../../x"),
    "name-absolute-process-one": lambda: _named(f"{CASE}/escape"),
    "name-failure-deletes-outputs": lambda: _named("../../../../../in", decoys=True),
    "name-nul-process-one": lambda: _named("a\x00b"),
    "name-surrogate-process-one": lambda: _named("\ud800"),
    **{
        f"{command}-{name}": (
            lambda command=command, what=what, mutate=mutate: _invalid(what, mutate, command)
        )
        for name, (what, mutate) in REJECTED.items()
        for command in ("validate", "test-source")
    },
    # 2. patterns that cannot hang (the second one hangs a backtracking engine with a timeout-less fallback too)
    "regex-test-source": lambda: _regex_test_source("(a+)+$", "a" * 40 + "!"),
    "regex-conform": lambda: _regex_conform("(a+)+$", "a" * 40 + "!"),
    "regex-alternation-conform": lambda: _regex_conform("(a|aa)+$", "a" * 100 + "!"),
    "fifo-source-validate": lambda: _usage("validate", "FIFO source"),
    "fifo-source-test-source": lambda: _usage("test-source", "FIFO source"),
    "fifo-source-conform": lambda: _usage("conform", "FIFO source"),
    "fifo-source-process-one": lambda: _usage("process-one", "FIFO source"),
    "fifo-input-conform": lambda: _usage("conform", "FIFO input"),
    # 3. bounded resources, no file beside the input, no silent partial output
    "geojson-nested-properties": lambda: _nested_geojson(40_000),
    "csv-one-huge-field": lambda: _huge_csv_field(150),
    "output-size-cap": _output_cap,
    "gml-gfs-beside-input": lambda: conform_case("reproduction", RUNNABLE["lake-man-gml"], "unmodified"),
    "dbf-cut-in-half": lambda: _shapefile("lake-man"),
    "trumbull-dbf-cut-to-a-third": lambda: _shapefile("trumbull"),
    "geojson-ends-early": _truncated_geojson,
    "zip-truncated": _truncated_member,
    # 4. exit codes
    "missing-source-validate": lambda: _usage("validate", "missing source"),
    "missing-source-test-source": lambda: _usage("test-source", "missing source"),
    "missing-source-conform": lambda: _usage("conform", "missing source"),
    "missing-source-process-one": lambda: _usage("process-one", "missing source"),
    "out-is-a-file-conform": lambda: _usage("conform", "--out a file"),
    "out-is-a-file-process-one": lambda: _usage("process-one", "--out a file"),
}


@pytest.fixture(scope="session")
def reproduction_outcomes(fuzz_root: Path) -> dict[str, Outcome]:
    """Every reproduction, run in parallel once."""
    cases = {name: build() for name, build in REPRODUCTIONS.items()}
    return dict(zip(cases, run_cases(cases.values(), fuzz_root), strict=True))


@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_issue_reproduction_is_contained(name: str, reproduction_outcomes: dict[str, Outcome]) -> None:
    outcome = reproduction_outcomes[name]
    assert not outcome.problems, outcome.report()
