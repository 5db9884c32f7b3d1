"""Licence, attribution and share-alike normalisation (processing.md §11)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.licenses import LicenseInfo, flag_text, normalise_license
from openaddr.sources import load_source

if TYPE_CHECKING:
    from pathlib import Path


def test_example_of_the_spec() -> None:
    entry = {
        "license": {"text": "CC BY 4.0", "url": "https://example.org/l", "attribution name": "City of X"}
    }
    info = normalise_license(entry)
    assert info == LicenseInfo("CC BY 4.0 (https://example.org/l)", True, "City of X", None)
    assert (flag_text(info.attribution_required), flag_text(info.share_alike)) == ("true", "")


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        (None, None),
        ("CC0", "CC0"),
        ("", ""),
        (5, "5"),
        (True, "True"),
        ({"text": "ODbL", "url": "https://o.org"}, "ODbL (https://o.org)"),
        ({"url": "https://o.org"}, "https://o.org"),
        ({"text": "ODbL"}, "ODbL"),
        ({"text": "ODbL", "url": None}, "ODbL"),
        ({}, None),
        ({"attribution": True}, None),
    ],
)
def test_license_text(license: Any, expected: str | None) -> None:
    entry = {} if license is None else {"license": license}
    assert normalise_license(entry).license == expected


@pytest.mark.parametrize(
    ("entry", "flag", "name"),
    [
        # 1. legacy attribution
        ({}, False, None),
        ({"attribution": "City of X"}, True, "City of X"),
        ({"attribution": ""}, False, None),
        ({"attribution": False}, False, None),
        ({"attribution": None}, False, None),
        ({"attribution": True}, True, "True"),
        ({"attribution": 3}, True, "3"),
        # 2. license["attribution name"]
        ({"license": {"attribution name": "County"}}, True, "County"),
        ({"attribution": "Old", "license": {"attribution name": "New"}}, True, "New"),
        ({"attribution": "Old", "license": {"attribution name": ""}}, True, "Old"),
        ({"license": {"attribution name": ""}}, False, None),
        ({"license": {"attribution name": False}}, True, "False"),
        ({"license": {"attribution name": 12}}, True, "12"),
        # 3. license["attribution"] sets the flag, possibly to null; 4. null with a name → true
        ({"license": {"attribution": True}}, True, None),
        ({"license": {"attribution": False, "attribution name": "County"}}, False, None),
        ({"attribution": "Old", "license": {"attribution": False}}, False, None),
        ({"license": {"attribution": None}}, None, None),
        ({"license": {"attribution": None, "attribution name": "County"}}, True, "County"),
        ({"attribution": "Old", "license": {"attribution": None}}, True, "Old"),
        # a string license has no attribution keys
        ({"license": "CC BY", "attribution": "Old"}, True, "Old"),
        # misspelled keys are ignored
        ({"license": {"attibrution name": "County", "attribution": True}}, True, None),
    ],
)
def test_attribution(entry: dict[str, Any], flag: bool | None, name: str | None) -> None:
    info = normalise_license(entry)
    assert (info.attribution_required, info.attribution_name) == (flag, name)


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        ("CC BY-SA", None),
        ({}, None),
        ({"share alike": True}, None),  # misspelled key
        ({"share-alike": True}, True),
        ({"share-alike": "y"}, True),
        ({"share-alike": "Yes"}, True),
        ({"share-alike": "T"}, True),
        ({"share-alike": "TRUE"}, True),
        ({"share-alike": False}, False),
        ({"share-alike": None}, False),
        ({"share-alike": ""}, False),
        ({"share-alike": "N"}, False),
        ({"share-alike": "no"}, False),
        ({"share-alike": "f"}, False),
        ({"share-alike": "False"}, False),
        ({"share-alike": "maybe"}, None),
        ({"share-alike": 1}, None),
        ({"share-alike": 0}, None),
    ],
)
def test_share_alike(license: Any, expected: bool | None) -> None:
    assert normalise_license({"license": license}).share_alike is expected


@pytest.mark.parametrize(("flag", "text"), [(True, "true"), (False, "false"), (None, "")])
def test_flag_text(flag: bool | None, text: str) -> None:
    assert flag_text(flag) == text


def test_corpus_misspellings(corpus_sources: Path) -> None:
    # ca/on/city_of_burlington.json spells "attibrution name"; sg/countrywide.json spells "share alike".
    burlington = json.loads((corpus_sources / "ca/on/city_of_burlington.json").read_text(encoding="utf-8"))
    license = burlington["layers"]["addresses"][0]["license"]
    assert license["attibrution name"] == "City of Burlington"
    assert license["attribution"] is True
    info = normalise_license(burlington["layers"]["addresses"][0])
    assert info == LicenseInfo(f"{license['text']} ({license['url']})", True, None, None)

    singapore = json.loads((corpus_sources / "sg/countrywide.json").read_text(encoding="utf-8"))
    license = singapore["layers"]["addresses"][0]["license"]
    assert license["share alike"] is False
    assert "text" not in license
    info = normalise_license(singapore["layers"]["addresses"][0])
    assert info == LicenseInfo(license["url"], True, "Singapore Land Authority", None)


def test_machine_fixture_share_alike_yes(fixtures: Path) -> None:
    # fr-paris.json (v1) writes "share-alike": "yes" and has no url or text.
    source = load_source(fixtures / "sources" / "fr-paris.json")
    (entry,) = source.entries()
    info = normalise_license(entry.data)
    name = "Institut National de l'Information Géographique et Forestière"
    assert info == LicenseInfo(None, True, name, True)


def test_every_corpus_entry_normalises(corpus_sources: Path) -> None:
    count = 0
    for path in sorted(corpus_sources.rglob("*.json")):
        for entry in load_source(path).entries():
            info = normalise_license(entry.data)
            count += 1
            assert info.license is None or isinstance(info.license, str)
            assert info.attribution_required in (True, False, None)
            assert info.share_alike in (True, False, None)
            if info.attribution_required is False:
                assert info.attribution_name is None
            if info.attribution_name is not None:
                assert info.attribution_required is True
            for flag in (info.attribution_required, info.share_alike):
                assert flag_text(flag) in ("true", "false", "")
    assert count > 2833
