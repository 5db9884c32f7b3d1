"""Output encoders and files (processing.md §9)."""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile
from datetime import date
from pathlib import Path

import pyogrio
import pytest
import shapely

from openaddr.canonical import AddressColumns
from openaddr.outputs import (
    STATE_KEYS,
    AtomicFile,
    Stats,
    csv_header,
    encode_address_csv,
    encode_address_csv_columns,
    encode_address_geojson,
    encode_feature_geojson,
    package_name,
    readme_text,
    write_package,
    write_state,
)


def _address(rows, plain=False):
    return AddressColumns([list(column) for column in zip(*rows, strict=True)], plain)


ROW = ("-122.2", "37.8", "12", 'Main "St", N', "", "Cité", None, None, "94704", None, "0123456789abcdef")


def test_csv_is_excel_dialect_with_crlf_and_minimal_quoting():
    data = csv_header() + encode_address_csv([ROW])
    assert data.startswith(b"LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH\r\n")
    assert data.endswith(b'-122.2,37.8,12,"Main ""St"", N",,Cit\xc3\xa9,,,94704,,0123456789abcdef\r\n')
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[1][3] == 'Main "St", N'


def test_address_geojson_carries_the_csv_values():
    line = encode_address_geojson(_address([ROW]), ["3"]).decode("utf-8")
    assert line.endswith("\n")
    assert line.count("\n") == 1
    feature = json.loads(line)
    assert feature["geometry"] == {"type": "Point", "coordinates": [-122.2, 37.8]}
    assert list(feature["properties"]) == [
        "hash",
        "number",
        "street",
        "unit",
        "city",
        "district",
        "region",
        "postcode",
        "id",
        "accuracy",
    ]
    assert feature["properties"]["street"] == 'Main "St", N'
    assert feature["properties"]["city"] == "Cité"
    assert "Cité" in line  # non-ASCII unescaped
    assert feature["properties"]["district"] == ""
    assert feature["properties"]["accuracy"] == 3
    assert feature["properties"]["hash"] == ROW[-1]


@pytest.mark.parametrize(("lon", "lat"), [("", "37.8"), ("nan", "1"), ("abc", "1"), ("1", "inf")])
def test_address_geojson_geometry_is_null_without_finite_coordinates(lon, lat):
    row = (lon, lat, *ROW[2:])
    feature = json.loads(encode_address_geojson(_address([row]), None))
    assert feature["geometry"] is None
    assert feature["properties"]["accuracy"] is None


@pytest.mark.parametrize(
    ("value", "expected"), [("5", 5), ("0", None), ("6", None), ("x", None), (None, None)]
)
def test_accuracy_is_an_integer_from_1_to_5_or_null(value, expected):
    feature = json.loads(encode_address_geojson(_address([ROW]), [value]))
    assert feature["properties"]["accuracy"] == expected


def test_feature_geojson_orders_properties_and_blanks_nulls():
    line = encode_feature_geojson(
        ['{"type":"Point","coordinates":[1.0,2.0]}', None],
        ("id", "height", "levels"),
        {"id": ["a", None], "height": ["3.5", ""], "levels": [None, "2"]},
        ["h1", "h2"],
    )
    first, second = (json.loads(x) for x in line.decode().splitlines())
    assert list(first["properties"].items()) == [
        ("hash", "h1"),
        ("id", "a"),
        ("height", "3.5"),
        ("levels", ""),
    ]
    assert second["geometry"] is None
    assert second["properties"]["levels"] == "2"


def test_stats_counts_invalid_and_null_island():
    stats = Stats(count=5)
    stats.add_coordinates(["1", "0", "", "200", "-3.5"], ["2", "0", "1", "1", "-4"])
    stats.add_filled("number", ["1", "", None, "2", "3"])
    other = Stats(count=1)
    other.add_coordinates(["10"], ["20"])
    stats.merge(other)
    assert stats.as_dict() == {
        "count": 6,
        "filled": {"number": 3},
        "bounds": [-3.5, -4.0, 10.0, 20.0],
        "invalid_coordinates": 2,
        "null_island": 1,
    }
    assert Stats().as_dict()["bounds"] is None


def test_state_files(tmp_path: Path):
    state = dict.fromkeys(STATE_KEYS)
    state.update({"source": "x.json", "skipped": False, "address count": 3, "tests passed": True})
    write_state(tmp_path, state)
    keys, values = json.loads((tmp_path / "index.json").read_text())
    assert keys == list(STATE_KEYS)
    assert len(keys) == 22
    assert values[keys.index("address count")] == 3
    text = (tmp_path / "index.txt").read_bytes().decode()
    header, row = text.split("\r\n")[:2]
    assert header.split("\t") == list(STATE_KEYS)
    cells = row.split("\t")
    assert cells[1] == "False"
    assert cells[2] == ""
    assert cells[-1] == "True"


def _write_then_fail(target: Path) -> None:
    with AtomicFile(target) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")


def test_atomic_file_leaves_nothing_when_discarded(tmp_path: Path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError, match="interrupted"):
        _write_then_fail(target)
    assert list(tmp_path.iterdir()) == []
    f = AtomicFile(target)
    f.write(b"whole")
    f.commit()
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.parametrize(
    ("path", "name", "first", "expected"),
    [
        ("/x/sources/us/ca/alameda.json", "county", True, "us/ca/alameda"),
        ("/x/sources/us/ca/alameda.json", "city", False, "us/ca/alameda-city"),
        ("/tmp/us-wy-park.json", "primary", True, "us-wy-park"),
    ],
)
def test_package_name(path, name, first, expected):
    assert package_name(Path(path), name, first) == expected


def test_package_is_readable_by_gdal(tmp_path: Path):
    csv_path = tmp_path / "out.csv"
    csv_path.write_bytes(csv_header() + encode_address_csv([ROW, ("-122.3", "37.9", *ROW[2:])]))
    zip_path = write_package(tmp_path / "alameda.zip", "us/ca/alameda", csv_path, None, "CC0")
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["README.txt", "us/ca/alameda.vrt", "us/ca/alameda.csv"]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
        assert zf.read("us/ca/alameda.csv") == csv_path.read_bytes()
        readme = zf.read("README.txt").decode()
    assert readme.splitlines()[2:] == ["Website: Unknown", "License: CC0"]
    meta, _, geometry, fields = pyogrio.raw.read(f"/vsizip/{zip_path}/us/ca/alameda.vrt")
    columns = list(meta["fields"])
    assert "LON" not in columns
    assert fields[columns.index("STREET")][0] == 'Main "St", N'
    points = shapely.from_wkb(geometry)
    assert shapely.get_x(points).round(6).tolist() == [-122.2, -122.3]
    assert meta["crs"] == "EPSG:4326"


def test_readme_text():
    text = readme_text("http://x", None, date(2026, 1, 2))
    assert text == (
        "Data packaged around 2026-01-02 by OpenAddresses (http://openaddresses.io).\n\n"
        "Website: http://x\nLicense: Unknown\n"
    )


def test_address_geojson_plain_coordinates_take_the_fast_path_to_the_same_features():
    rows = [ROW, ("-0", "12", *ROW[2:])]
    fast = encode_address_geojson(_address(rows, plain=True), None).decode().splitlines()
    slow = encode_address_geojson(_address(rows), None).decode().splitlines()
    assert [json.loads(line) for line in fast] == [json.loads(line) for line in slow]
    assert '"coordinates":[-0,12]' in fast[1]


def test_column_csv_encoder_writes_the_csv_modules_bytes():
    values = ["", "a", "a,b", 'q"x', "line\nbreak", "cr\r", " sp ", "é", None, '""', ",", "\r\n", "\t", "'"]
    rng = random.Random(7)
    for _ in range(5000):
        rows = [tuple(rng.choice(values) for _ in range(11)) for _ in range(rng.randint(1, 4))]
        columns = [list(column) for column in zip(*rows, strict=True)]
        assert encode_address_csv_columns(columns) == encode_address_csv(rows), rows
