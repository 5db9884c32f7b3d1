"""Reading source files within their limits, entry names and paths built from them (issue 10: one trust boundary)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from openaddr.errors import SourceFileError, SourceUnreadableError, UnsafePathError
from openaddr.sources import (
    MAX_DEPTH,
    MAX_SOURCE_BYTES,
    MAX_STRING_CHARS,
    contained_path,
    load_source,
    nesting_depth,
)

CURRY = Path("us/or/curry.json")  # an address entry "county" with three acceptance cases, and a parcels entry


@pytest.fixture
def curry(corpus_sources: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((corpus_sources / CURRY).read_text(encoding="utf-8"))
    return document


def _with_extra(document: dict[str, Any], raw_value: str) -> str:
    """The document's JSON text with ``"x": <raw_value>`` added at the top level."""
    return json.dumps(document)[:-1] + f', "x": {raw_value}}}'


def _load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "source.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return load_source(path)


def load_source_text(tmp_path: Path, document: dict[str, Any]) -> Any:
    return _load_text(tmp_path, json.dumps(document))


def test_every_corpus_file_is_within_the_limits(corpus_sources: Path) -> None:
    files = sorted(corpus_sources.rglob("*.json"))
    assert len(files) == 2833
    for path in files:
        load_source(path)  # must not raise
    assert max(path.stat().st_size for path in files) < MAX_SOURCE_BYTES


@pytest.mark.parametrize("depth", [500, 100_000])
def test_deep_nesting_is_refused_before_parsing(curry: dict[str, Any], tmp_path: Path, depth: int) -> None:
    # ~500 levels made upgrade_document raise RecursionError; 100,000 made json.loads raise it.
    text = _with_extra(curry, "[" * depth + "]" * depth)
    with pytest.raises(SourceFileError, match=rf"nested {depth + 1} levels deep, more than the limit of 32"):
        _load_text(tmp_path, text)


def test_nesting_at_the_limit_is_read(curry: dict[str, Any], tmp_path: Path) -> None:
    levels = MAX_DEPTH - 1  # the document itself is one level
    source = _load_text(tmp_path, _with_extra(curry, "[" * levels + "]" * levels))
    assert source.original["x"] == json.loads("[" * levels + "]" * levels)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert nesting_depth('{"a": "[[[[{{{{\\"]]]"}') == 1
    assert nesting_depth('[{"a": [1, {"b": "}"}]}]') == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("1e999", r"source.json: x: the number is out of range"),
        ("NaN", "not a JSON document: NaN is not JSON"),
        ("-Infinity", "not a JSON document: -Infinity is not JSON"),
    ],
)
def test_non_finite_numbers_are_refused(
    curry: dict[str, Any], tmp_path: Path, raw: str, message: str
) -> None:
    with pytest.raises(SourceFileError, match=message):
        _load_text(tmp_path, _with_extra(curry, raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("9" * 4301, "a number of 4,301 characters"),  # int() refused it with a ValueError traceback
        ("-" + "9" * 200, "a number of 201 characters"),
        ("1." + "5" * 200, "a number of 202 characters"),
    ],
)
def test_numbers_beyond_the_limits_are_refused(
    curry: dict[str, Any], tmp_path: Path, raw: str, message: str
) -> None:
    with pytest.raises(SourceFileError, match=f"not a valid source file: {message}"):
        _load_text(tmp_path, _with_extra(curry, raw))


@pytest.mark.parametrize(
    ("escaped", "message"),
    [
        ("a\\u0000b", "the string holds NUL"),
        ("a\\ud800", "the string holds a lone surrogate U\\+D800"),
        ("\\udc00", "the string holds a lone surrogate U\\+DC00"),
    ],
)
def test_nul_and_lone_surrogates_are_refused_with_the_json_path(
    curry: dict[str, Any], tmp_path: Path, escaped: str, message: str
) -> None:
    text = json.dumps(curry).replace('"name": "county"', f'"name": "{escaped}"', 1)
    with pytest.raises(SourceFileError, match=f"layers.addresses\\[0\\].name: {message}"):
        _load_text(tmp_path, text)


def test_lone_surrogate_in_an_acceptance_test_is_refused(curry: dict[str, Any], tmp_path: Path) -> None:
    # test-source printed it and died with UnicodeEncodeError.
    text = json.dumps(curry).replace('"unit": "SP K"', '"unit": "\\udc00"', 1)
    with pytest.raises(
        SourceFileError, match=r"acceptance-tests\[2\].expected.unit: the string holds a lone"
    ):
        _load_text(tmp_path, text)


def test_lone_surrogate_in_a_key_is_refused(curry: dict[str, Any], tmp_path: Path) -> None:
    text = json.dumps(curry)[:-1] + ', "k\\ud800": 1}'
    with pytest.raises(SourceFileError, match="the key holds a lone surrogate"):
        _load_text(tmp_path, text)


def test_long_strings_are_refused(curry: dict[str, Any], tmp_path: Path) -> None:
    curry["layers"]["addresses"][0]["website"] = "w" * (MAX_STRING_CHARS + 1)
    with pytest.raises(
        SourceFileError, match=r"layers.addresses\[0\].website: a string of 100,001 characters"
    ):
        _load_text(tmp_path, json.dumps(curry))


def test_large_files_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"x": "' + b"a" * MAX_SOURCE_BYTES + b'"}')
    with pytest.raises(SourceFileError, match="larger than the limit of 1,048,576 bytes"):
        load_source(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "source.json"
    os.mkfifo(fifo)
    with pytest.raises(SourceUnreadableError, match="not a regular file"):
        load_source(fifo)


def test_folder_and_missing_file_are_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadableError, match="not a regular file"):
        load_source(tmp_path)
    with pytest.raises(SourceUnreadableError, match="No such file or directory"):
        load_source(tmp_path / "missing.json")


@pytest.mark.parametrize("name", ["../../x", "/abs/dir", "..", ".hidden", "a/b", "a b", "é", "x" * 101, 5])
def test_unsafe_names_never_become_paths(curry: dict[str, Any], tmp_path: Path, name: Any) -> None:
    curry["layers"]["addresses"][0]["name"] = name
    source = _load_text(tmp_path, json.dumps(curry))
    assert [(e.layer, e.name) for e in source.entries()] == [
        ("addresses", "unnamed-1"),
        ("parcels", "county"),
    ]
    out = tmp_path / "out"
    assert source.entries()[0].directory(out) == out / "addresses" / "unnamed-1"


@pytest.mark.parametrize("name", ["county", "a..b", "City_of-X.2", "x" * 100, "0"])
def test_safe_names_are_kept(curry: dict[str, Any], tmp_path: Path, name: str) -> None:
    curry["layers"]["addresses"][0]["name"] = name
    assert load_source_text(tmp_path, curry).entries()[0].name == name


def test_layers_of_the_wrong_type_give_no_entries(curry: dict[str, Any], tmp_path: Path) -> None:
    # A list of layers made every command raise AttributeError.
    curry["layers"] = [curry["layers"]]
    assert load_source_text(tmp_path, curry).entries() == []
    curry["layers"] = {"addresses": "x"}
    assert load_source_text(tmp_path, curry).entries() == []


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "a\\b", "a\x00b", "/etc"])
def test_contained_path_refuses_components_that_leave_the_folder(tmp_path: Path, part: str) -> None:
    with pytest.raises(UnsafePathError):
        contained_path(tmp_path, "addresses", part)


def test_contained_path_follows_links_already_on_disk(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "addresses").mkdir(parents=True)
    (out / "addresses" / "county").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        contained_path(out, "addresses", "county")
    assert contained_path(out, "addresses", "city") == out / "addresses" / "city"
