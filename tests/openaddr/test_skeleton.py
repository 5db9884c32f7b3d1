"""The conform suggested for an entry without one (openaddr/skeleton.py, machine-ci.md §9.1 "missing conform").

Real fixtures go through the real conform step (``conform_entry``: extraction, sample, then ``missing_conform``);
the suggested conform must pick the fields a maintainer picked, validate once placed into the source, and — put
into the source — really produce addresses.
"""

from __future__ import annotations

import csv
import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.errors import SourceProblem
from openaddr.process import conform_entry
from openaddr.skeleton import (
    MAX_FIELD_LENGTH,
    MAX_FIELDS,
    STATE_KEY,
    check_skeleton,
    read_skeleton,
    skeleton_text,
    suggest_conform,
)
from openaddr.sources import load_source
from openaddr.validation import source_issues

if TYPE_CHECKING:
    from pathlib import Path

    from openaddr.process import EntryResult

BERKELEY = {
    "format": "shapefile",
    "number": "StreetNum",
    "street": {"function": "join", "fields": ["Direction", "StreetName", "StreetSufx"], "separator": " "},
    "unit": "Unit",
    "city": "City",
    "region": "State",
    "postcode": "Zip",
}
PARK = {
    "format": "shapefile",
    "number": {"function": "prefixed_number", "field": "DLVRY_ADD"},
    # The sample's values carry unit phrases ("… UNIT 2"), so units are split off the street.
    "street": {"function": "postfixed_street", "field": "DLVRY_ADD", "may_contain_units": True},
    "unit": {"function": "postfixed_unit", "field": "DLVRY_ADD"},
    "id": "UID",
}
PORTLAND = {
    "format": "csv",
    "number": "address_number",
    "street": {
        "function": "join",
        "fields": ["str_predir_code", "street_name", "street_type_code", "str_postdir_code"],
        "separator": " ",
    },
    "unit": "unit_value",
    "city": "city",
    "district": "county",
    "region": "state_abbrev",
    "postcode": "zip_code",
    "id": "address_id",
    "lon": "X",
    "lat": "Y",
}
BUCKS = {
    "format": "geojson",
    "number": "SITUS_ADDR_NUM",
    "street": {
        "function": "join",
        "fields": ["SITUS_FDPRE", "SITUS_FNAME", "SITUS_FTYPE", "SITUS_FDSUF"],
        "separator": " ",
    },
    "city": "MUNI",
    "id": "GlobalID",
}


def without_conform(fixtures: Path, tmp_path: Path, source: str, data: str) -> tuple[Path, Path]:
    """The fixture source with every conform removed, and its data, copied into ``tmp_path``."""
    document = json.loads((fixtures / "sources" / source).read_text(encoding="utf-8"))
    document.pop("conform", None)
    for entries in (document.get("layers") or {}).values():
        for entry in entries:
            entry.pop("conform", None)
    path = tmp_path / "source.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    copy = tmp_path / (fixtures / "data" / data).name
    shutil.copy(fixtures / "data" / data, copy)
    return path, copy


def run(source: Path, data: Path, out: Path) -> EntryResult:
    return conform_entry(load_source(str(source)).entries()[0], data, out)


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        (
            "us-ca-berkeley.json",
            "us-ca-berkeley-excerpt.zip",
            BERKELEY,
        ),  # a corpus source that has no conform
        ("us-wy-park.json", "us-wy-park.zip", PARK),  # one full-address field
        ("us/or/portland.json", "us-or-portland.zip", PORTLAND),  # CSV: street parts, lon/lat
        ("us/pa/bucks.json", "us-pa-bucks.geojson.zip", BUCKS),  # GeoJSON, SITUS_ words
    ],
)
def test_a_missing_conform_gets_the_fields_a_maintainer_would_pick(
    fixtures: Path, tmp_path: Path, source: str, data: str, expected: dict[str, Any]
) -> None:
    path, copy = without_conform(fixtures, tmp_path, source, data)
    result = run(path, copy, tmp_path / "out")
    assert result.problem is SourceProblem.missing_conform
    record = read_skeleton(tmp_path / "out" / "skeleton.json")
    assert record is not None
    assert record["conform"] == expected
    assert record["valid"] is True
    assert record["issues"] == []
    assert record["missing"] == []
    log = (tmp_path / "out" / "output.txt").read_text(encoding="utf-8")
    assert "Suggested conform for" in log
    assert "Source is missing a conform object" in log
    # Placed into the source, the skeleton validates with the project's own validator.
    document = json.loads(path.read_text(encoding="utf-8"))
    document["conform"] = record["conform"]
    placed = tmp_path / "placed.json"
    placed.write_text(json.dumps(document), encoding="utf-8")
    assert source_issues(load_source(str(placed))) == []


def test_the_suggested_conform_really_conforms_the_data(fixtures: Path, tmp_path: Path) -> None:
    """Berkeley's suggested conform, put into the source, produces its addresses: numbers and joined streets."""
    path, copy = without_conform(fixtures, tmp_path, "us-ca-berkeley.json", "us-ca-berkeley-excerpt.zip")
    run(path, copy, tmp_path / "first")
    record = read_skeleton(tmp_path / "first" / "skeleton.json")
    assert record is not None
    document = json.loads(path.read_text(encoding="utf-8"))
    document["conform"] = record["conform"]
    path.write_text(json.dumps(document), encoding="utf-8")
    result = run(path, copy, tmp_path / "second")
    assert result.problem is None
    assert result.state["address count"] > 0
    assert not (tmp_path / "second" / "skeleton.json").exists()
    with (tmp_path / "second" / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == result.state["address count"]
    assert sum(1 for row in rows if row["NUMBER"].strip()) > len(rows) // 2
    assert sum(1 for row in rows if row["STREET"].strip()) > len(rows) // 2


def test_projected_csv_coordinates_are_pointed_out(fixtures: Path, tmp_path: Path) -> None:
    path, copy = without_conform(fixtures, tmp_path, "us/or/portland.json", "us-or-portland.zip")
    run(path, copy, tmp_path / "out")
    record = read_skeleton(tmp_path / "out" / "skeleton.json")
    assert record is not None
    assert record["hints"] == [
        "lon values are not degrees: add the data's srs (EPSG:…)",
        "lat values are not degrees: add the data's srs (EPSG:…)",
    ]


def entry_of(tmp_path: Path, layer: str = "addresses") -> Any:
    document = {
        "schema": 2,
        "coverage": {"country": "us"},
        "layers": {layer: [{"name": "city", "data": "http://example.com/a.csv", "protocol": "http"}]},
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return load_source(str(path)).entries()[0]


def test_no_recognisable_field_gives_placeholders_and_the_field_list(tmp_path: Path) -> None:
    rows = [["colour", "weight", "Shape_len"], ["red", "12", "3.5"]]
    skeleton = check_skeleton(entry_of(tmp_path), suggest_conform("addresses", rows, data_format="csv"))
    assert skeleton.matched == {}
    assert skeleton.missing == ["number", "street"]
    assert skeleton.conform["number"] == skeleton.conform["street"] == ""  # never matches: nothing guessed
    assert skeleton.conform["notes"] == (
        "Suggested by the Machine: fill in number, street. Fields in the data: colour, weight, Shape_len"
    )
    assert "no lon column recognised: CSV conforms need lon and lat" in skeleton.hints
    assert skeleton.issues == []  # a strict v2 file still validates with it


def test_hostile_field_names_are_capped_and_never_used_when_too_long(tmp_path: Path) -> None:
    long_name = "ADDR_NUM" + "x" * 5000
    header = [long_name, "<script>alert(1)</script>", "```", "ST`NAME</>", *[f"F{i}" for i in range(20_000)]]
    rows = [header, ["12", "x", "y", "Main St"]]
    skeleton = suggest_conform("addresses", rows, data_format="shapefile")
    assert skeleton.field_count == len(header)
    assert long_name not in json.dumps(skeleton.record())
    assert all(len(name) <= MAX_FIELD_LENGTH for name in skeleton.fields)
    assert "(and " in skeleton.conform["notes"]
    assert len(skeleton.conform["notes"]) <= 1500
    # The odd but short name is a real field: it is used as it is, and shown escaped.
    assert skeleton.conform["street"] == "ST`NAME</>"
    text = skeleton_text(skeleton.conform)
    assert not set(text) & set("`<>&")
    assert json.loads(text) == skeleton.conform
    # Only the first MAX_FIELDS are read: a recognisable field after them is not picked.
    late = [*(f"F{i}" for i in range(MAX_FIELDS)), "ADDR_NUM", "STREET"]
    assert suggest_conform("addresses", [late, ["1"] * len(late)], data_format="gdb").matched == {}


def test_owner_and_mailing_fields_are_not_the_address(tmp_path: Path) -> None:
    rows = [
        ["OWNER_CITY", "MAIL_ZIP", "SITE_CITY", "ZIP5", "HOUSE_NUM", "ST_NAME"],
        ["A", "1", "B", "2", "3", "C"],
    ]
    skeleton = suggest_conform("addresses", rows, data_format="shapefile")
    assert skeleton.conform["city"] == "SITE_CITY"
    assert skeleton.conform["postcode"] == "ZIP5"


@pytest.mark.parametrize(
    ("layer", "header", "expected"),
    [
        ("parcels", ["OBJECTID", "PARCEL_ID", "OWNER"], {"format": "shapefile", "pid": "PARCEL_ID"}),
        (
            "buildings",
            ["BLDG_ID", "HEIGHT_M", "NUM_FLOORS"],
            {"format": "shapefile", "id": "BLDG_ID", "height": "HEIGHT_M", "levels": "NUM_FLOORS"},
        ),
        (
            "centerlines",
            [
                "SEG_ID",
                "FULLNAME",
                "ONE_WAY",
                "SPEED_MPH",
                "L_F_ADD",
                "L_T_ADD",
                "R_F_ADD",
                "R_T_ADD",
                "ZIP_L",
            ],
            {
                "format": "shapefile",
                "id": "SEG_ID",
                "name": "FULLNAME",
                "oneway": "ONE_WAY",
                "speed": {"function": "mph_to_kph", "field": "SPEED_MPH"},
                "addr_from_left": "L_F_ADD",
                "addr_to_left": "L_T_ADD",
                "addr_from_right": "R_F_ADD",
                "addr_to_right": "R_T_ADD",
                "zip_left": "ZIP_L",
            },
        ),
    ],
)
def test_other_layer_types_get_their_own_attributes(
    tmp_path: Path, layer: str, header: list[str], expected: dict[str, Any]
) -> None:
    skeleton = suggest_conform(layer, [header, ["1"] * len(header)], data_format="shapefile")
    assert skeleton.conform == expected
    assert check_skeleton(entry_of(tmp_path, layer), skeleton).issues == []


def test_a_skeleton_that_does_not_validate_says_why(tmp_path: Path) -> None:
    """Parcels cannot be read from CSV (the schema's formats): the record says so instead of hiding it."""
    skeleton = check_skeleton(
        entry_of(tmp_path, "parcels"), suggest_conform("parcels", [["PIN"], ["1"]], data_format="csv")
    )
    assert not skeleton.valid
    assert any("conform.format" in issue for issue in skeleton.issues)
    assert skeleton.record()["valid"] is False
    assert STATE_KEY == "conform skeleton"
