"""Schema validation and ``openaddr validate`` (processing.md §2.5, §1.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openaddr.cli import main
from openaddr.sources import load_source
from openaddr.validation import (
    FUNCTIONS,
    build_registry,
    conform_errors,
    fatal_issues,
    format_path,
    schema_errors,
    source_issues,
    validate_source,
)

GALVESTON = Path("us/tx/galveston.json")  # one address entry "county" with regexp attributes
PHILADELPHIA = Path("us/pa/philadelphia.json")  # address entry "county": postcode is a chain of two regexps


def _copy(corpus_sources: Path, relative: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    target = tmp_path / relative.name
    shutil.copyfile(corpus_sources / relative, target)
    return target, json.loads(target.read_text(encoding="utf-8"))


def _write(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def test_every_corpus_file_validates_strictly(corpus_sources: Path) -> None:
    files = sorted(corpus_sources.rglob("*.json"))
    assert len(files) == 2833
    failures: dict[str, list[str]] = {}
    for path in files:
        source = load_source(path)
        assert source.strict, path
        problems = validate_source(source)
        if problems:
            failures[str(path.relative_to(corpus_sources))] = problems
    assert failures == {}


def test_validate_command_over_the_corpus(corpus_sources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(corpus_sources)]) == 0
    out = capsys.readouterr().out
    assert out == "2833 valid, 0 invalid\n"


def _break_unknown_function(doc: dict[str, Any]) -> None:
    doc["layers"]["addresses"][0]["conform"]["number"] = {"function": "frobnicate", "field": "SITUS_NO"}


def _break_regexp(doc: dict[str, Any]) -> None:
    doc["layers"]["addresses"][0]["conform"]["street"]["pattern"] = "("


def _break_name(doc: dict[str, Any]) -> None:
    del doc["layers"]["addresses"][0]["name"]


def _break_number_type(doc: dict[str, Any]) -> None:
    doc["layers"]["addresses"][0]["conform"]["number"] = 5


def _break_list_member(doc: dict[str, Any]) -> None:
    doc["layers"]["addresses"][0]["conform"]["number"] = ["SITUS_NO", 7]


def _break_function_argument(doc: dict[str, Any]) -> None:
    doc["layers"]["addresses"][0]["conform"]["unit"]["pattern"] = 1


@pytest.mark.parametrize(
    ("breaker", "kind", "json_path", "fragment"),
    [
        (
            _break_unknown_function,
            "Schema",
            "layers.addresses[0].conform.number",
            "unknown function 'frobnicate'",
        ),
        (
            _break_regexp,
            "Conform",
            "layers.addresses[0].conform.street.pattern",
            "invalid regular expression '('",
        ),
        (_break_name, "Schema", "layers.addresses[0]", "'name' is a required property"),
        (_break_number_type, "Schema", "layers.addresses[0].conform.number", "5 is not of type"),
        (_break_list_member, "Schema", "layers.addresses[0].conform.number[1]", "7 is not of type 'string'"),
        (
            _break_function_argument,
            "Schema",
            "layers.addresses[0].conform.unit.pattern",
            "1 is not of type 'string'",
        ),
    ],
)
def test_broken_corpus_file_names_the_json_path(
    corpus_sources: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaker: Any,
    kind: str,
    json_path: str,
    fragment: str,
) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    assert validate_source(load_source(path)) == []
    breaker(doc)
    _write(path, doc)

    problems = validate_source(load_source(path))
    # The entry is still named "county" in messages, even when the name key is the broken part (fallback name).
    entry = "addresses/primary" if breaker is _break_name else "addresses/county"
    assert f"{path}: {entry}: {kind}: {json_path}: " in "\n".join(problems)
    assert any(fragment in p for p in problems), problems

    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "0 valid, 1 invalid"
    assert out[0].startswith(f"{path}: ")
    assert any(f"{kind}: {json_path}: " in line for line in out)


def test_unknown_function_is_reported_once(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    _break_unknown_function(doc)
    _write(path, doc)
    source = load_source(path)
    # The conform check finds it too, but source_issues() does not repeat a path the schema reported.
    assert [str(i) for i in conform_errors(source.document)] == [
        "Conform: layers.addresses[0].conform.number: Unknown conform function `frobnicate`"
    ]
    assert [str(i) for i in source_issues(source)] == [
        "Schema: layers.addresses[0].conform.number: unknown function 'frobnicate'"
    ]


def test_chain_steps_are_checked(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, PHILADELPHIA, tmp_path)
    chain = doc["layers"]["addresses"][0]["conform"]["postcode"]
    assert chain["function"] == "chain"
    chain["functions"][1]["pattern"] = "(?<=a+)b"  # Python's re needs a fixed-width look-behind
    chain["functions"].append({"function": "nope", "field": "zip_code"})
    chain["functions"].append(["zip_code", 3])
    _write(path, doc)

    problems = [str(i) for i in source_issues(load_source(path))]
    base = "layers.addresses[0].conform.postcode.functions"
    assert f"Schema: {base}[2]: unknown function 'nope'" in problems
    assert f"Schema: {base}[3][1]: 3 is not of type 'string'" in problems
    assert any(p.startswith(f"Conform: {base}[1].pattern: invalid regular expression") for p in problems)
    assert len(problems) == 3


def test_function_not_allowed_for_attribute(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    # postfixed_unit serves only ``unit``; ``city`` takes the standard functions.
    doc["layers"]["addresses"][0]["conform"]["city"] = {"function": "postfixed_unit", "field": "SITUS"}
    _write(path, doc)
    (problem,) = source_issues(load_source(path))
    assert problem.path == "layers.addresses[0].conform.city"
    assert problem.message.startswith("function 'postfixed_unit' is not allowed here")


def test_coverage_geometry_resolves_through_geojson_schema(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    doc["coverage"]["geometry"] = {"type": "Pointy", "coordinates": [1, 2]}
    _write(path, doc)
    (problem,) = source_issues(load_source(path))
    assert problem.path == "coverage.geometry.type"
    assert "'Pointy' is not one of" in problem.message


def test_registry_holds_every_schema_file_and_the_geojson_id() -> None:
    registry = build_registry()
    schema_dir = Path(__file__).resolve().parents[2] / "openaddr" / "schema"
    for path in schema_dir.rglob("*.json"):
        assert registry.contents(path.as_uri()) == json.loads(path.read_text(encoding="utf-8"))
    geojson = json.loads((schema_dir / "util" / "geojson.json").read_text(encoding="utf-8"))
    assert registry.contents("geojson") == geojson
    assert registry.contents((schema_dir / "util" / "geojson").as_uri()) == geojson


def test_format_keywords_are_annotations(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    doc["official_website"] = "not a uri"
    doc["layers"]["addresses"][0]["email"] = "not an email"
    _write(path, doc)
    assert validate_source(load_source(path)) == []


def test_legacy_keys_are_errors_in_strict_mode_only(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    doc["layers"]["addresses"][0]["cache"] = "https://example.org/cache.zip"
    _write(path, doc)
    source = load_source(path)
    strict = [str(i) for i in schema_errors(source.document)]
    assert strict == [
        "Schema: layers.addresses[0]: Additional properties are not allowed ('cache' was unexpected)"
    ]
    assert schema_errors(source.document, advisory=True) == []


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((), "(root)"),
        (("coverage",), "coverage"),
        (("layers", "addresses", 0, "conform", "number"), "layers.addresses[0].conform.number"),
        (
            ("layers", "addresses", 2, "license", "attribution name"),
            'layers.addresses[2].license["attribution name"]',
        ),
        (
            ("layers", "addresses", 0, "test", "acceptance-tests", 1),
            "layers.addresses[0].test.acceptance-tests[1]",
        ),
        (("coverage", "US Census"), 'coverage["US Census"]'),
    ],
)
def test_format_path(parts: tuple[str | int, ...], expected: str) -> None:
    assert format_path(parts) == expected


def test_known_functions() -> None:
    assert sorted(FUNCTIONS) == sorted(
        "join regexp format prefixed_number postfixed_street postfixed_unit remove_prefix remove_postfix "
        "first_non_empty constant map mph_to_kph get chain".split()
    )


def test_machine_fixtures_validate_in_advisory_mode(fixtures: Path) -> None:
    files = sorted((fixtures / "sources").rglob("*.json"))
    assert files
    for path in files:
        source = load_source(path)
        problems = validate_source(source)  # must not raise
        assert all(p.startswith(f"{path}: ") for p in problems)
        if "schema" not in source.original:
            assert not source.strict


def test_v1_fixture_carrying_cache_keys_is_valid(fixtures: Path) -> None:
    # us-ca-carson-cached.json is layerless with cache, fingerprint and version: legitimate in an old file.
    source = load_source(fixtures / "sources" / "us-ca-carson-cached.json")
    assert source.version == 1
    assert {"cache", "fingerprint", "version"} <= set(source.original)
    # Its only other oddity is a conform key v2 does not know (7.5.5's fixtures used postal_code).
    assert "postal_code" in source.original["conform"]
    assert [str(i) for i in source_issues(source)] == [
        "Schema: layers.addresses[0].conform: Additional properties are not allowed ('postal_code' was unexpected)"
    ]


def test_v1_fixture_errors_name_the_upgraded_path(fixtures: Path) -> None:
    # fr-paris.json: coverage without "country" and "share-alike": "yes" (a string) in its licence.
    path = fixtures / "sources" / "fr-paris.json"
    original = json.loads(path.read_text(encoding="utf-8"))
    assert "country" not in original["coverage"]
    assert original["license"]["share-alike"] == "yes"
    problems = validate_source(load_source(path))
    assert problems == [
        f"{path}: Schema: coverage: 'country' is a required property",
        f"{path}: addresses/primary: Schema: layers.addresses[0].license.share-alike: 'yes' is not of type 'boolean'",
    ]


def test_validate_command_reports_broken_and_skips_non_sources(
    corpus_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "sources"
    (folder / "xx").mkdir(parents=True)
    shutil.copyfile(corpus_sources / GALVESTON, folder / "xx" / "good.json")
    (folder / "xx" / "broken.json").write_text('{"schema": 2, "coverage": ', encoding="utf-8")
    (folder / "list.json").write_text("[1, 2]", encoding="utf-8")  # not a source: skipped when walking
    (folder / "package.json").write_text('{"name": "x"}', encoding="utf-8")  # not a source either
    (folder / "notes.txt").write_text("not json", encoding="utf-8")  # not *.json: never walked
    _, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    _break_number_type(doc)
    _break_regexp(doc)
    _write(folder / "xx" / "bad.json", doc)

    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 valid, 2 invalid"
    assert out[0] == f"{folder / 'xx' / 'bad.json'}: 2 problems"
    assert out[1].startswith("    addresses/county: Schema: layers.addresses[0].conform.number: ")
    assert out[2].startswith("    addresses/county: Conform: layers.addresses[0].conform.street.pattern: ")
    assert out[3].startswith(f"{folder / 'xx' / 'broken.json'}: not a JSON document")
    assert len(out) == 5

    # Named explicitly, a non-object file is checked and invalid; a missing file is bad usage (exit 2).
    assert main(["validate", str(folder / "list.json"), str(folder / "missing.json")]) == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith(f"{folder / 'list.json'}: a source file must hold a JSON object")
    assert out[-1] == "0 valid, 1 invalid"
    assert captured.err == (
        f"openaddr validate: {folder / 'missing.json'}: cannot read source file: No such file or directory\n"
    )


def test_validate_command_lists_the_first_problems_only(
    corpus_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, doc = _copy(corpus_sources, GALVESTON, tmp_path)
    conform = doc["layers"]["addresses"][0]["conform"]
    for key in ("number", "street", "unit", "city", "region", "postcode", "district"):
        conform[key] = 5
    _write(path, doc)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: 7 problems"
    assert len([line for line in out if line.startswith("    addresses/county: Schema: ")]) == 5
    assert out[6] == "    … and 2 more"
    assert out[7] == "0 valid, 1 invalid"


# -- the trust boundary: what crashed the validator, or got through it (issue 10) -------------------------------

CURRY = Path("us/or/curry.json")  # an address entry "county" with three acceptance cases


def _entry(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = doc["layers"]["addresses"][0]
    return entry


def _set(path: tuple[str, ...], value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        target = _entry(doc)
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _text_edit(old: str, new: str) -> Any:
    def mutate(doc: dict[str, Any]) -> str:
        text = json.dumps(doc)
        assert old in text
        return text.replace(old, new, 1)

    return mutate


def _extra(raw: str) -> Any:
    return lambda doc: json.dumps(doc)[:-1] + f', "x": {raw}}}'


def _layers_list(doc: dict[str, Any]) -> None:
    doc["layers"] = [doc["layers"]]


#: Each hostile edit of curry.json and what ``validate`` must say about it.
HOSTILE = {
    "nesting-500": (_extra("[" * 500 + "]" * 500), ": nested 501 levels deep, more than the limit of 32"),
    "int-4301-digits": (
        _extra("9" * 4301),
        ": not a valid source file: a number of 4,301 characters (the limit",
    ),
    "regexp-overflow": (
        _set(("conform", "street", "pattern"), "a{4294967296}"),
        "Conform: layers.addresses[0].conform.street.pattern: invalid regular expression 'a{4294967296}'",
    ),
    "regexp-3000-parens": (
        _set(("conform", "street", "pattern"), "(" * 3000 + ")" * 3000),
        "Conform: layers.addresses[0].conform.street.pattern: invalid regular expression '(((",
    ),
    "layers-list": (_layers_list, "Unsafe: layers: must be an object of layer types, not an array"),
    "function-list": (
        _set(("conform", "street", "function"), ["join"]),
        "Schema: layers.addresses[0].conform.street: the function name ['join'] is not a string",
    ),
    "chain-functions-not-list": (
        _set(("conform", "street"), {"function": "chain", "functions": "x", "variable": "s"}),
        "Schema: layers.addresses[0].conform.street.functions: 'x' is not of type 'array'",
    ),
    "acceptance-tests-not-list": (
        _set(("test", "acceptance-tests"), "x"),
        "Schema: layers.addresses[0].test.acceptance-tests: 'x' is not of type 'array'",
    ),
    "surrogate-in-expected": (
        _text_edit('"unit": "SP K"', '"unit": "\\udc00"'),
        ": layers.addresses[0].test.acceptance-tests[2].expected.unit: the string holds a lone surrogate U+DC00",
    ),
    "encoding-rot13": (
        _set(("conform", "encoding"), "rot13"),
        "Conform: layers.addresses[0].conform.encoding: 'rot13' is not a text encoding",
    ),
    "srs-5000-digits": (
        _set(("conform", "srs"), "EPSG:" + "1" * 5000),
        "Conform: layers.addresses[0].conform.srs: 'EPSG:1111",
    ),
    "name-dotdot": (
        _set(("name",), "../../x"),
        "Unsafe: layers.addresses[0].name: '../../x' is not a safe name: it must match "
        "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
    ),
    "name-absolute": (
        _set(("name",), "/abs/dir"),
        "Unsafe: layers.addresses[0].name: '/abs/dir' is not a safe name: it must match ",
    ),
    "name-nul": (_set(("name",), "a\x00b"), ": layers.addresses[0].name: the string holds NUL"),
    "name-surrogate": (
        _text_edit('"name": "county"', '"name": "a\\ud800"'),
        ": layers.addresses[0].name: the string holds a lone surrogate U+D800",
    ),
}


def _write_hostile(corpus_sources: Path, folder: Path, case: str) -> Path:
    mutate, _ = HOSTILE[case]
    doc = json.loads((corpus_sources / CURRY).read_text(encoding="utf-8"))
    text = mutate(doc)
    path = folder / f"{case}.json"
    path.write_text(json.dumps(doc) if text is None else text, encoding="utf-8", errors="surrogatepass")
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_source_is_invalid_with_a_named_error(
    corpus_sources: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_hostile(corpus_sources, tmp_path, case)
    expected = HOSTILE[case][1]
    for command in ("validate", "test-source"):
        assert main([command, str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.err == ""
        first = captured.out.splitlines()[0]
        assert first.startswith(f"{path}: ")
        assert expected in first
    assert captured.out.splitlines()[-1] == "0 passed, 0 failed"  # no case of an invalid file runs


def test_hostile_sources_exit_1_without_a_traceback(corpus_sources: Path, tmp_path: Path) -> None:
    paths = [str(_write_hostile(corpus_sources, tmp_path, case)) for case in sorted(HOSTILE)]
    for command in ("validate", "test-source"):
        result = subprocess.run(
            [sys.executable, "-m", "openaddr", command, *paths],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (command, result.returncode, result.stderr) == (command, 1, "")
        reported = {line.split(": ", 1)[0] for line in result.stdout.splitlines()[:-1]}
        assert reported == set(paths)


def test_too_many_entries_are_unsafe(corpus_sources: Path, tmp_path: Path) -> None:
    path, doc = _copy(corpus_sources, CURRY, tmp_path)
    entry = _entry(doc)
    doc["layers"]["addresses"] = [{**entry, "name": f"e{i}"} for i in range(101)]
    _write(path, doc)
    assert [str(i) for i in source_issues(load_source(path)) if i.kind == "Unsafe"] == [
        "Unsafe: layers.addresses: 101 entries, more than the limit of 100"
    ]


def test_unsafe_problems_are_fatal_in_advisory_mode(fixtures: Path, tmp_path: Path) -> None:
    doc = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    doc["name"] = "../up"
    path = tmp_path / "park.json"
    _write(path, doc)
    source = load_source(path)
    assert not source.strict
    assert [str(i) for i in fatal_issues(source)] == [
        "Unsafe: layers.addresses[0].name: '../up' is not a safe name: it must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    ]
