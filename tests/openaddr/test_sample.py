"""``sample.json`` rows and the geometry type (processing.md §9.4), on the real fixtures.

Expected rows come from reading the same files another way: the DBF from its bytes, CSV with the ``csv``
module, GeoJSON with ``json``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from openaddr.readers.archives import prepare_input
from openaddr.readers.sample import EXCERPT_WARNING, take_sample
from tests.dbf import dbf_records


def dbf_native(path: Path) -> tuple[list[str], list[list[Any]]]:
    """Field names and records of a DBF as native values: integers, floats, text, None for blanks."""
    fields, raw_records = dbf_records(path)
    records = []
    for record in raw_records:
        position = 1
        values: list[Any] = []
        for _, kind, width, decimals in fields:
            text = record[position : position + width].decode("latin-1")
            position += width
            if kind == "C":
                values.append(text.rstrip(" ") or None)
            elif not text.strip():
                values.append(None)
            elif kind == "N" and decimals == 0:
                values.append(int(text))
            else:
                values.append(float(text))
        records.append(values)
    return [f[0] for f in fields], records


def test_shapefile_sample_has_native_values(fixtures: Path) -> None:
    names, records = dbf_native(fixtures / "conforms" / "lake-man.dbf")

    rows, geometry_type = take_sample(
        [fixtures / "conforms" / "lake-man.shp"], fixtures / "conforms", {"format": "shapefile"}, "http"
    )

    assert rows == [names, *records[:5]]
    assert geometry_type == "Point"


def test_zipped_shapefile_sample_uses_the_input_of_section_5(fixtures: Path, tmp_path: Path) -> None:
    conform = {"format": "shapefile", "file": "AddressPoints/AddressPoints.shp"}
    paths = prepare_input(
        fixtures / "data" / "us-ut-excerpt.zip", tmp_path, compression="zip", file=conform["file"]
    )
    names, _ = dbf_native(tmp_path / "AddressPoints" / "AddressPoints.dbf")

    rows, geometry_type = take_sample(paths, tmp_path, conform, "ftp")

    assert rows is not None
    assert rows[0] == names
    assert len(rows) == 6
    assert rows[1][names.index("LoadDate")] == "2014/06/28"  # dates as text
    assert geometry_type == "Point"


@pytest.mark.parametrize(
    ("source", "conform", "encoding", "delimiter"),
    [
        ("conforms/jp-nara.csv", {"format": "csv", "encoding": "SHIFT_JISX0213"}, "shift_jisx0213", ","),
        # headers/skiplines are not applied to the sample: the first six lines as they are
        ("conforms/lake-man-3740.csv", {"format": "csv", "headers": 2, "skiplines": 2}, "utf-8", ","),
    ],
)
def test_csv_sample_is_the_first_six_lines(
    fixtures: Path, source: str, conform: dict[str, Any], encoding: str, delimiter: str
) -> None:
    path = fixtures / source
    with path.open(newline="", encoding=encoding) as fh:
        expected = list(islice(csv.reader(fh, delimiter=delimiter), 6))

    rows, geometry_type = take_sample([path], path.parent, conform, "http")

    assert rows == expected
    assert geometry_type is None


def test_semicolon_csv_sample_from_a_zip(fixtures: Path, tmp_path: Path) -> None:
    conform = {"format": "csv", "csvsplit": ";", "encoding": "ISO-8859-1"}
    paths = prepare_input(
        fixtures / "data" / "BAN_licence_gratuite_repartage_974.zip", tmp_path, compression="zip", file=None
    )
    with paths[0].open(newline="", encoding="iso-8859-1") as fh:
        expected = list(islice(csv.reader(fh, delimiter=";"), 6))

    rows, _ = take_sample(paths, tmp_path, conform, "http")

    assert rows == expected


def test_esri_sample_is_the_cache_csv_with_its_geometry_type(fixtures: Path) -> None:
    path = fixtures / "conforms" / "lake-man-split2.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        expected = list(islice(csv.reader(fh), 6))
    first_geom = expected[1][expected[0].index("OA:geom")]
    assert first_geom.startswith("POINT (")
    assert len(first_geom[7:-1].split()) == 3  # x, y and z

    rows, geometry_type = take_sample([path], path.parent, {"format": "geojson"}, "ESRI")

    assert rows == expected
    assert geometry_type == "Point 2.5D"


def test_geojson_sample_property_order_and_types(fixtures: Path) -> None:
    path = fixtures / "data" / "us-pa-bucks.geojson"
    features = json.loads(path.read_text())["features"][:10]
    names: list[str] = []
    for feature in features:
        names += [k for k in feature["properties"] if k not in names]

    rows, geometry_type = take_sample([path], path.parent, {"format": "geojson"}, "http")

    assert rows is not None
    assert rows[0] == names
    assert len(rows) == 6
    for row, feature in zip(rows[1:], features, strict=False):
        for name, value in zip(names, row, strict=True):
            expected = feature["properties"].get(name)
            assert value == expected, name
            assert type(value) is type(expected), name
    types = {f["geometry"]["type"] for f in features if f["geometry"]}
    assert len(types) == 1
    assert geometry_type == types.pop()


def test_geojson_sample_without_geometries(fixtures: Path, tmp_path: Path) -> None:
    paths = prepare_input(
        fixtures / "data" / "us-mi-grand-traverse.geojson.zip", tmp_path, compression="zip", file=None
    )

    rows, geometry_type = take_sample(paths, tmp_path, {"format": "geojson"}, "http")

    assert rows is not None
    assert rows[1][rows[0].index("ADDNUMB")] == "4173"
    assert rows[1][rows[0].index("OBJECTID")] == 103504
    assert geometry_type == "Unknown"


def test_gdb_sample_reads_the_named_layer(fixtures: Path, tmp_path: Path) -> None:
    paths = prepare_input(fixtures / "data" / "nj-statewide.gdb.zip", tmp_path, compression="zip", file=None)

    rows, geometry_type = take_sample(paths, tmp_path, {"format": "gdb", "layer": "AddressPoints_NJ"}, "http")

    assert rows is not None
    assert "AP_GUID" in rows[0]
    assert len(rows) == 6
    assert geometry_type == "Point"


def test_gml_sample(fixtures: Path, tmp_path: Path) -> None:
    path = tmp_path / "lake-man-gml.gml"
    shutil.copyfile(fixtures / "conforms" / "lake-man-gml.gml", path)

    rows, geometry_type = take_sample([path], tmp_path, {"format": "xml"}, "http")

    assert rows is not None
    assert rows[1][rows[0].index("STRNAME")] == "FRUITED PLAINS LN"
    assert rows[1][rows[0].index("NUMBER")] == 5115
    assert geometry_type == "Point"


@pytest.mark.parametrize(
    ("names", "conform", "expected"),
    [
        # no conform: the first path with a known extension
        (["notes.txt", "b.csv", "c.shp"], None, "b.csv"),
        # unknown format: the same rule
        (["notes.txt", "a.json"], {"format": "excel"}, "a.json"),
        # format csv and no known extension: the first file
        (["data.dsv", "more.txt"], {"format": "csv", "csvsplit": "|"}, "data.dsv"),
    ],
)
def test_sample_file_without_a_usable_conform(
    tmp_path: Path, names: list[str], conform: dict[str, Any] | None, expected: str
) -> None:
    content = {
        ".csv": "a,b\n1,2\n",
        ".txt": "x\n",
        ".dsv": "a|b\n1|2\n",
        ".json": json.dumps({"type": "FeatureCollection", "features": [_point({"a": 1})]}),
        ".shp": "not a shapefile",
    }
    for name in names:
        (tmp_path / name).write_text(content[Path(name).suffix])
    paths = sorted(tmp_path / n for n in names)

    rows, _ = take_sample(paths, tmp_path, conform, "http")

    first_column = {"b.csv": "a", "a.json": "a", "data.dsv": "a"}[expected]
    assert rows is not None
    assert rows[0][0] == first_column
    assert rows[1][0] in ("1", 1)


def _point(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "properties": properties, "geometry": {"type": "Point", "coordinates": [1, 2]}}


@pytest.mark.parametrize(
    ("name", "content", "conform"),
    [
        ("header-only.csv", "a,b\n", {"format": "csv"}),
        ("empty.geojson", json.dumps({"type": "FeatureCollection", "features": []}), {"format": "geojson"}),
        ("broken.shp", "not a shapefile at all", {"format": "shapefile"}),
        ("bad.csv", b"a,b\n\xff\xfe,1\n", {"format": "csv"}),
    ],
)
def test_no_sample_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: str | bytes, conform: dict[str, Any]
) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    rows, _ = take_sample([path], tmp_path, conform, "http")

    assert rows is None
    assert EXCERPT_WARNING in caplog.text
