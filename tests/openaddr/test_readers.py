"""Readers (processing.md §6) on the real fixtures, checked against independent reads of the same files.

Shapefiles are re-read with a small DBF/SHP parser written here from the file format, GML with ElementTree,
CSV with the standard ``csv`` module, GeoJSON with ``json``; reprojected coordinates come from pyproj directly.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import random
import re
import shutil
import struct
import threading
import xml.etree.ElementTree as ET
import zipfile
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyproj
import pytest
import shapely

from openaddr.errors import ConformError, UnknownFormatError
from openaddr.readers import open_reader
from openaddr.readers.archives import prepare_input
from openaddr.readers.base import OA_GEOM, OA_X, OA_Y, Batch
from openaddr.readers.choose import choose_input
from openaddr.readers.csvfile import CsvReader
from openaddr.readers.esri import EsriReader
from openaddr.readers.gdal import NO_ENCODING_WARNING, GdalReader, arrow_texts
from openaddr.readers.geojson import GeoJsonReader
from openaddr.readers.geometry import (
    centroids,
    geometries_from_wkb,
    geometry_type_name,
    points_from_wkb,
    wkt_texts,
)
from openaddr.readers.reader import float_texts, parse_srs, resolve_encoding
from tests.dbf import dbf_records

if TYPE_CHECKING:
    from pathlib import Path

LABEL = "test addresses/primary"


# --- independent readers -----------------------------------------------------------------------------------


def read_dbf(path: Path, encoding: str) -> tuple[list[str], list[dict[str, str]]]:
    """Field names and records of a DBF, each value as OGR's text form (§6.1), from the file format itself."""
    fields, raw_records = dbf_records(path)
    records = []
    for record in raw_records:
        if record[:1] == b"*":
            continue
        position = 1
        values = {}
        for name, kind, width, decimals in fields:
            raw = record[position : position + width]
            position += width
            values[name] = _dbf_text(kind, width, decimals, raw, encoding)
        records.append(values)
    return [f[0] for f in fields], records


def _dbf_text(kind: str, width: int, decimals: int, raw: bytes, encoding: str) -> str:
    if kind == "C":
        return raw.decode(encoding).rstrip(" ")
    text = raw.decode("ascii").strip()
    if not text or set(text) <= {"*", "0"} and kind == "D":
        return ""
    if kind == "D":
        return f"{text[:4]}/{text[4:6]}/{text[6:8]}"
    try:
        if kind == "N" and decimals == 0 and width < 19:
            return str(int(text))
        return repr(float(text))
    except ValueError:  # e.g. decimal commas in a numeric field (be-wa-brussels): not compared
        return f"unparsable {text}"


def read_shp(path: Path) -> list[tuple[int, list[list[tuple[float, float]]]]]:
    """Shape type and parts (lists of x/y) of every record of a .shp file."""
    data = path.read_bytes()
    shapes = []
    position = 100
    while position < len(data):
        _, length = struct.unpack(">ii", data[position : position + 8])
        content = data[position + 8 : position + 8 + 2 * length]
        position += 8 + 2 * length
        shape_type = struct.unpack("<i", content[:4])[0]
        if shape_type == 0:
            shapes.append((0, []))
        elif shape_type in (1, 11, 21):
            shapes.append((shape_type, [[struct.unpack("<2d", content[4:20])]]))
        else:
            parts_count, points_count = struct.unpack("<2i", content[36:44])
            starts = list(struct.unpack(f"<{parts_count}i", content[44 : 44 + 4 * parts_count]))
            base = 44 + 4 * parts_count
            points = [
                struct.unpack("<2d", content[base + 16 * k : base + 16 * k + 16]) for k in range(points_count)
            ]
            bounds = [*starts, points_count]
            shapes.append((shape_type, [points[bounds[k] : bounds[k + 1]] for k in range(parts_count)]))
    return shapes


def read_all(
    path: Path, conform: dict[str, Any], layer_type: str = "addresses", protocol: str = "http"
) -> Batch:
    """Every record of a file as one batch (joined from small batches to exercise batching)."""
    with open_reader(path, conform, layer_type=layer_type, protocol=protocol, label=LABEL) as reader:
        batches = list(reader.batches(batch_size=4))
        columns = reader.columns
    assert all(b.size <= 4 for b in batches)
    joined: dict[str, list[str]] = {}
    for name in [*columns, OA_X, OA_Y, *([OA_GEOM] if layer_type != "addresses" else [])]:
        joined[name] = [v for b in batches for v in b.columns[name]]
    geometries = None if layer_type == "addresses" else [g for b in batches for g in (b.geometries or [])]
    return Batch(columns=joined, size=sum(b.size for b in batches), geometries=geometries)


def transformer_from_prj(prj: Path) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(prj.read_text()), "EPSG:4326", always_xy=True)


def assert_close_texts(actual: list[str], expected: list[float], tolerance: float = 1e-9) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert abs(float(a) - e) <= tolerance, (a, e)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, fixtures: Path) -> dict[str, Path]:
    """The fixture zips used below, unpacked once with the standard library."""
    root = tmp_path_factory.mktemp("zips")
    out = {}
    for name in (
        "us-ut-excerpt",
        "us-ca-alameda_county-excerpt-mixedcase",
        "us-wy-park",
        "us-ca-berkeley-excerpt",
        "be-wa-brussels",
        "BAN_licence_gratuite_repartage_75",
        "BAN_licence_gratuite_repartage_974",
    ):
        with zipfile.ZipFile(fixtures / "data" / f"{name}.zip") as z:
            z.extractall(root / name)
        out[name] = root / name
    return out


# --- GDAL formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shp", "conform", "encoding"),
    [
        ("conforms/lake-man.shp", {}, "ascii"),
        ("conforms/lake-man-utf8.shp", {"encoding": "utf-8"}, "utf-8"),
        ("conforms/lake-man-utf8.shp", {}, "iso-8859-1"),  # 7.5.5's ISO-8859-1 guess gives mojibake
        ("us-wy-park/ParkCountyADDRESS_POINTS_point.shp", {}, "iso-8859-1"),
        ("us-ut-excerpt/AddressPoints/AddressPoints.shp", {}, "ascii"),
        ("us-ca-alameda_county-excerpt-mixedcase/SPAD.Shp", {}, "ascii"),
    ],
)
def test_shapefile_texts_match_the_dbf(
    fixtures: Path, extracted: dict[str, Path], shp: str, conform: dict[str, str], encoding: str
) -> None:
    top, _, rest = shp.partition("/")
    path = fixtures / shp if top == "conforms" else extracted[top] / rest
    dbf = next(p for p in path.parent.iterdir() if p.stem == path.stem and p.suffix.lower() == ".dbf")
    names, records = read_dbf(dbf, encoding)

    batch = read_all(path, {"format": "shapefile", **conform})

    assert batch.size == len(records)
    assert list(batch.columns)[: len(names)] == names
    for name in names:
        assert batch.columns[name] == [r[name] for r in records], name


@pytest.mark.parametrize(
    ("shp", "conform"),
    [
        ("conforms/lake-man.shp", {}),
        ("conforms/lake-man-epsg26943.shp", {}),
        ("conforms/lake-man-epsg26943-noprj.shp", {"srs": "EPSG:26943"}),
        ("us-ut-excerpt/AddressPoints/AddressPoints.shp", {}),
        ("us-ca-alameda_county-excerpt-mixedcase/SPAD.Shp", {}),
        ("us-wy-park/ParkCountyADDRESS_POINTS_point.shp", {}),
    ],
)
def test_shapefile_points_are_reprojected_to_wgs84(
    fixtures: Path, extracted: dict[str, Path], shp: str, conform: dict[str, str]
) -> None:
    top, _, rest = shp.partition("/")
    path = fixtures / shp if top == "conforms" else extracted[top] / rest
    points = [parts[0][0] for _, parts in read_shp(path)]
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if "srs" in conform:
        transformer = pyproj.Transformer.from_crs(conform["srs"], "EPSG:4326", always_xy=True)
    else:
        prj = next(p for p in path.parent.iterdir() if p.stem == path.stem and p.suffix.lower() == ".prj")
        transformer = transformer_from_prj(prj)
    ex, ey = transformer.transform(xs, ys)

    batch = read_all(path, {"format": "shapefile", **conform})

    assert_close_texts(batch.columns[OA_X], list(ex))
    assert_close_texts(batch.columns[OA_Y], list(ey))
    if "epsg26943" not in shp and "srs" not in conform and prj.read_text().startswith("GEOGCS"):
        # no reprojection: the full-precision repr of the stored double
        assert batch.columns[OA_X] == [repr(x) for x in xs.tolist()]


def test_shapefile_without_projection_fails(fixtures: Path) -> None:
    with pytest.raises(ConformError, match="No projection found"):
        open_reader(
            fixtures / "conforms" / "lake-man-epsg26943-noprj.shp",
            {"format": "shapefile"},
            layer_type="addresses",
            protocol="http",
            label=LABEL,
        )


def test_srs_overrides_the_prj(fixtures: Path) -> None:
    """7.5.5: ``srs`` wins over the ``.prj`` (here a deliberately wrong one)."""
    path = fixtures / "conforms" / "lake-man-epsg26943.shp"
    x, y = read_shp(path)[0][1][0][0]
    ex, ey = pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(x, y)

    batch = read_all(path, {"format": "shapefile", "srs": "EPSG:3857"})

    assert float(batch.columns[OA_X][0]) == pytest.approx(ex, abs=1e-9)
    assert float(batch.columns[OA_Y][0]) == pytest.approx(ey, abs=1e-9)


def test_no_encoding_warns_and_tries_iso_8859_1(fixtures: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    batch = read_all(fixtures / "conforms" / "lake-man-utf8.shp", {"format": "shapefile"})
    assert NO_ENCODING_WARNING in caplog.text
    assert batch.columns["street"][0] == "PZ ESPAÑA".encode().decode("iso-8859-1")


def test_undecodable_shapefile_text_names_the_field(fixtures: Path, tmp_path: Path) -> None:
    for ext in ("shp", "shx", "prj"):
        shutil.copyfile(fixtures / "conforms" / f"lake-man-utf8.{ext}", tmp_path / f"latin.{ext}")
    dbf = (fixtures / "conforms" / "lake-man-utf8.dbf").read_bytes()
    (tmp_path / "latin.dbf").write_bytes(dbf.replace("ESPAÑA ".encode(), "ESPAÑA  ".encode("iso-8859-1")))

    with pytest.raises(ConformError, match="field 'street'"):
        read_all(tmp_path / "latin.shp", {"format": "shapefile", "encoding": "utf-8"})
    batch = read_all(tmp_path / "latin.shp", {"format": "shapefile", "encoding": "latin-1"})
    assert batch.columns["street"][0] == "PZ ESPAÑA"


def test_brussels_cpg_left_behind_text_is_decoded_with_the_conform_encoding(
    fixtures: Path, tmp_path: Path
) -> None:
    paths = prepare_input(
        fixtures / "data" / "be-wa-brussels.zip", tmp_path, compression="zip", file="shp/UrbAdm_AdPt.shp"
    )
    assert not any(p.suffix == ".cpg" for p in paths)
    shp = choose_input(paths, tmp_path, {"format": "shapefile", "file": "shp/UrbAdm_AdPt.shp"}, "http")
    names, records = read_dbf(tmp_path / "shp" / "UrbAdm_AdPt.dbf", "utf-8")
    text_fields = [n for n in names if n.endswith("_FR")]

    batch = read_all(shp, {"format": "shapefile", "encoding": "utf-8", "srs": "EPSG:31370"})

    assert batch.size == len(records) == 666
    for name in text_fields:
        assert batch.columns[name] == [r[name] for r in records]
    assert any(not v.isascii() for v in batch.columns["PW_NAME_FR"])


def _fiona_texts(
    path: Path, layer: str | int | None = None
) -> tuple[list[str], list[dict[str, str]], list[Any]]:
    fiona = pytest.importorskip("fiona")
    with fiona.open(path, layer=layer) as src:
        names = list(src.schema["properties"])
        records = []
        points = []
        for feature in src:
            props = dict(feature.properties)
            records.append(
                {
                    k: "" if v is None else repr(v) if isinstance(v, float) else str(v)
                    for k, v in props.items()
                }
            )
            points.append(feature.geometry.coordinates if feature.geometry else None)
    return names, records, points


def test_gdb_folder_matches_an_independent_read(fixtures: Path) -> None:
    path = fixtures / "conforms" / "lake-man-gdb.gdb"
    names, records, points = _fiona_texts(path)

    batch = read_all(path, {"format": "gdb"})

    assert batch.size == len(records) == 6
    for name in names:
        assert batch.columns[name] == [r[name] for r in records]
    assert batch.columns[OA_X] == [repr(float(p[0])) for p in points]
    assert batch.columns[OA_Y] == [repr(float(p[1])) for p in points]


@pytest.mark.parametrize(
    "zip_name", ["lake-man-gdb-othername-nodir.zip", "lake-man-gdb-othername.zip", "lake-man.gdb.zip"]
)
def test_zipped_gdbs_read_like_the_folder(fixtures: Path, tmp_path: Path, zip_name: str) -> None:
    expected = read_all(fixtures / "conforms" / "lake-man-gdb.gdb", {"format": "gdb"})
    paths = prepare_input(fixtures / "data" / zip_name, tmp_path, compression="zip", file=None)
    path = choose_input(paths, tmp_path, {"format": "gdb"}, "http")

    assert read_all(path, {"format": "gdb"}).columns == expected.columns


@pytest.mark.parametrize("layer", ["AddressPoints_NJ", 2])
def test_gdb_layer_by_name_or_index(fixtures: Path, tmp_path: Path, layer: str | int) -> None:
    paths = prepare_input(fixtures / "data" / "nj-statewide.gdb.zip", tmp_path, compression="zip", file=None)
    path = choose_input(paths, tmp_path, {"format": "gdb"}, "http")
    names, records, _ = _fiona_texts(path, layer="AddressPoints_NJ")

    batch = read_all(path, {"format": "gdb", "layer": layer})

    assert batch.size == len(records)
    assert batch.columns["AP_GUID"] == [r["AP_GUID"] for r in records]


@pytest.mark.parametrize("layer", ["Addresses", 7, "2"])
def test_unknown_layer_names_the_existing_ones(fixtures: Path, tmp_path: Path, layer: str | int) -> None:
    paths = prepare_input(fixtures / "data" / "nj-statewide.gdb.zip", tmp_path, compression="zip", file=None)
    path = choose_input(paths, tmp_path, {"format": "gdb"}, "http")
    with pytest.raises(ConformError, match="'LNDMRK_NAME', 'SEG_NAME', 'AddressPoints_NJ'"):
        open_reader(
            path, {"format": "gdb", "layer": layer}, layer_type="addresses", protocol="http", label=LABEL
        )


def test_gml_matches_the_xml(fixtures: Path, tmp_path: Path) -> None:
    # GDAL may write a .gfs beside a GML file: never beside the read-only fixture
    path = tmp_path / "lake-man-gml.gml"
    shutil.copyfile(fixtures / "conforms" / "lake-man-gml.gml", path)
    ns = {"ogr": "http://ogr.maptools.org/", "gml": "http://www.opengis.net/gml"}
    members = ET.parse(path).getroot().findall("gml:featureMember/ogr:lake_man", ns)
    records = []
    for member in members:
        values = {child.tag.split("}")[1]: child.text or "" for child in member}
        values["fid"] = member.get("fid", "")
        records.append(values)

    batch = read_all(path, {"format": "xml", "srs": "EPSG:4326"})

    assert batch.size == len(records) == 6
    # GDAL exposes the fields that occur in the file, plus the feature id
    present = {name for r in records for name in r} - {"geometryProperty"}
    assert set(batch.columns) - {OA_X, OA_Y} == present
    for name in present:
        assert batch.columns[name] == [r.get(name, "") for r in records], name
    coordinates = [r["geometryProperty"] for r in records]
    assert coordinates == [""] * 6  # the point is in a child element; read it from there
    points = [m.find(".//gml:coordinates", ns).text.split(",") for m in members]  # type: ignore[union-attr]
    # GDAL's GML coordinate parser may land one unit in the last place away from correct rounding
    assert_close_texts(batch.columns[OA_X], [float(p[0]) for p in points], tolerance=1e-13)
    assert_close_texts(batch.columns[OA_Y], [float(p[1]) for p in points], tolerance=1e-13)


def test_polygons_for_parcels_keep_the_whole_geometry(extracted: dict[str, Path]) -> None:
    path = extracted["us-ca-berkeley-excerpt"] / "Parcels.shp"
    shapes = read_shp(path)
    transformer = transformer_from_prj(path.with_suffix(".prj"))

    batch = read_all(path, {"format": "shapefile"}, layer_type="parcels")

    assert batch.size == len(shapes) == 746
    assert batch.geometries is not None
    for (_, parts), geometry, wkt, x, y in zip(
        shapes[:40],
        batch.geometries,
        batch.columns[OA_GEOM],
        batch.columns[OA_X],
        batch.columns[OA_Y],
        strict=False,
    ):
        rings = [
            ring
            for polygon in getattr(geometry, "geoms", [geometry])
            for ring in (polygon.exterior, *polygon.interiors)
        ]
        assert sorted(len(r.coords) for r in rings) == sorted(len(p) for p in parts)
        first = parts[0][0]
        ex, ey = transformer.transform(*first)
        assert any(abs(c[0] - ex) < 1e-9 and abs(c[1] - ey) < 1e-9 for r in rings for c in r.coords)
        # OA:geom is the %.16g WKT of that same geometry; OA:x/OA:y its GEOS centroid
        assert wkt.startswith(("POLYGON ((", "MULTIPOLYGON ((("))
        assert shapely.equals_exact(shapely.from_wkt(wkt), geometry, tolerance=1e-12)
        numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?", wkt)
        coords = shapely.get_coordinates(geometry).ravel().tolist()
        assert numbers == [f"{v:.16g}" for v in coords]
        assert (float(x), float(y)) == (geometry.centroid.x, geometry.centroid.y)


def test_address_layer_of_polygons_gives_centroids(extracted: dict[str, Path]) -> None:
    path = extracted["us-ca-berkeley-excerpt"] / "Parcels.shp"
    shapes = read_shp(path)
    transformer = transformer_from_prj(path.with_suffix(".prj"))

    batch = read_all(path, {"format": "shapefile"})

    for (_, parts), x, y in list(zip(shapes, batch.columns[OA_X], batch.columns[OA_Y], strict=True))[:25]:
        rings = [
            list(zip(*transformer.transform([p[0] for p in part], [p[1] for p in part]), strict=True))
            for part in parts
        ]
        cx, cy = _exact_centroid(rings)
        assert float(x) == pytest.approx(cx, abs=1e-11)
        assert float(y) == pytest.approx(cy, abs=1e-11)


def _exact_centroid(rings: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """Area-weighted centroid of polygon rings in exact rational arithmetic (signs give holes)."""
    area = Fraction(0)
    sx = Fraction(0)
    sy = Fraction(0)
    for ring in rings:
        for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False):
            a, b, c, d = Fraction(x0), Fraction(y0), Fraction(x1), Fraction(y1)
            cross = a * d - c * b
            area += cross
            sx += (a + c) * cross
            sy += (b + d) * cross
    return float(sx / (3 * area)), float(sy / (3 * area))


def test_early_stop_joins_the_reading_threads(fixtures: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    with open_reader(
        fixtures / "conforms" / "lake-man.shp",
        {"format": "shapefile"},
        layer_type="addresses",
        protocol="http",
        label=LABEL,
    ) as reader:
        batches = reader.batches(batch_size=1)
        first = next(batches)
        batches.close()
    assert first.size == 1
    assert {t.name for t in threading.enumerate()} - before == set()


@pytest.mark.parametrize("fmt", ["shapefile", "csv", "geojson"])
def test_columns_selection_materialises_only_those(fixtures: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "shapefile":
        path, conform = fixtures / "conforms" / "lake-man.shp", {"format": "shapefile"}
        wanted = ["NUMBER", "STRNAME", "NOPE"]
    elif fmt == "csv":
        path, conform = (
            fixtures / "conforms" / "lake-man-3740.csv",
            {"format": "csv", "lon": "lon", "lat": "lat"},
        )
        wanted = ["number", "street", "NOPE"]
    else:
        path = tmp_path / "a.geojson"
        path.write_text(
            json.dumps({"type": "FeatureCollection", "features": [_feature({"a": 1, "b": 2}, (1, 2))]})
        )
        conform, wanted = {"format": "geojson"}, ["b", "NOPE"]
    with open_reader(path, conform, layer_type="addresses", protocol="http", label=LABEL) as reader:
        batch = next(reader.batches(columns=wanted))
    assert list(batch.columns) == [*(w for w in wanted if w != "NOPE"), OA_X, OA_Y]


def test_one_million_points_are_not_needed_to_see_batching(fixtures: Path) -> None:
    with GdalReader(
        fixtures / "conforms" / "lake-man.shp", {}, layer_type="addresses", label=LABEL
    ) as reader:
        sizes = [b.size for b in reader.batches(batch_size=4)]
        assert reader.feature_count == 6
        assert reader.geometry_type == "Point"
    assert sizes == [4, 2]


# --- CSV ------------------------------------------------------------------------------------------------------


def test_utm_csv_is_reprojected_with_seven_decimals(fixtures: Path) -> None:
    path = fixtures / "conforms" / "lake-man-3740.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    transformer = pyproj.Transformer.from_crs("EPSG:3740", "EPSG:4326", always_xy=True)
    ex, ey = transformer.transform([float(r["lon"]) for r in rows], [float(r["lat"]) for r in rows])

    batch = read_all(path, json.loads((fixtures / "conforms" / "lake-man-3740.json").read_text())["conform"])

    assert batch.columns[OA_X] == [f"{v:.7f}" for v in ex]
    assert batch.columns[OA_Y] == [f"{v:.7f}" for v in ey]
    assert list(batch.columns) == ["number", "street", "postcode", "admin", OA_X, OA_Y]
    assert batch.columns["street"] == [r["street"] for r in rows]


def test_shift_jis_csv(fixtures: Path) -> None:
    path = fixtures / "conforms" / "jp-nara.csv"
    conform = json.loads((fixtures / "conforms" / "jp-nara.json").read_text())["conform"]
    with path.open(newline="", encoding="shift_jisx0213") as fh:
        header, *rows = list(csv.reader(fh))
    lon, lat = header.index("経度"), header.index("緯度")
    ex, ey = pyproj.Transformer.from_crs("EPSG:4612", "EPSG:4326", always_xy=True).transform(
        [float(r[lon]) for r in rows], [float(r[lat]) for r in rows]
    )

    batch = read_all(path, conform)

    assert list(batch.columns) == [h for h in header if h not in ("経度", "緯度")] + [OA_X, OA_Y]
    assert batch.columns["大字・町丁目名"] == [r[header.index("大字・町丁目名")] for r in rows]
    assert batch.columns[OA_X] == [f"{v:.7f}" for v in ex]
    assert batch.columns[OA_Y] == [f"{v:.7f}" for v in ey]


@pytest.mark.parametrize(
    ("name", "encoding"),
    [("BAN_licence_gratuite_repartage_75", "utf-8"), ("BAN_licence_gratuite_repartage_974", "iso-8859-1")],
)
def test_ban_semicolon_csvs(fixtures: Path, extracted: dict[str, Path], name: str, encoding: str) -> None:
    path = next(extracted[name].glob("*.csv"))
    with path.open(newline="", encoding=encoding) as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    conform = {"format": "csv", "csvsplit": ";", "lon": "lon", "lat": "lat", "encoding": encoding.upper()}

    batch = read_all(path, conform)

    assert batch.size == len(rows)
    assert batch.columns["nom_voie"] == [r["nom_voie"] for r in rows]
    assert batch.columns[OA_X] == [r["lon"] for r in rows]  # no srs: the text passes through
    assert batch.columns[OA_Y] == [r["lat"] for r in rows]
    assert "lon" not in batch.columns
    assert batch.columns["nom_commune"] == [r["nom_commune"] for r in rows]
    if encoding != "utf-8":
        assert "Saint-André" in batch.columns["nom_commune"]


def write_csv(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode(encoding))
    return path


def csv_batch(path: Path, **conform: Any) -> tuple[Batch, CsvReader]:
    reader = CsvReader(path, {"format": "csv", "lon": "x", "lat": "y", **conform}, label=LABEL)
    batches = list(reader.batches(batch_size=3))
    columns: dict[str, list[str]] = {k: [] for k in [*reader.columns, OA_X, OA_Y]}
    for b in batches:
        for k in columns:
            columns[k] += b.columns[k]
    return Batch(columns=columns, size=sum(b.size for b in batches)), reader


@pytest.mark.parametrize(
    ("text", "conform", "expected"),
    [
        # blank lines ignored, decimal commas, no srs: texts pass through
        ("x;y;n\n\n-21,77;64,1;1\n\n\n5;6;2\n", {"csvsplit": ";"}, {"n": ["1", "2"], OA_X: ["-21.77", "5"]}),
        # quoted fields span lines, doubled quotes
        ('x,y,n\n1,2,"a ""b""\nc"\n', {}, {"n": ['a "b"\nc'], OA_Y: ["2"]}),
        # headers -1: COLUMN1…n from the first line, which is data
        ("1,2,a\n3,4,b\n", {"headers": -1, "lon": "COLUMN1", "lat": "COLUMN2"}, {"COLUMN3": ["a", "b"]}),
        # headers 2 / skiplines 2: the second line is the header
        ("title\nx,y,n\n1,2,a\n", {"headers": 2, "skiplines": 2}, {"n": ["a"]}),
        ("x,y,n\n1,2,a\n", {"headers": 1, "skiplines": 1}, {"n": ["a"]}),
        # lon/lat found by upper-case name (7.5.5), then case-insensitively
        ("X,Y,n\n1,2,a\n", {}, {OA_X: ["1"], "n": ["a"]}),
        ("Lon,Lat,n\n1,2,a\n", {"lon": "LON", "lat": "lat"}, {OA_X: ["1"], OA_Y: ["2"]}),
        # pipe delimiter, CR-only line ends, BOM dropped
        ("\ufeffx|y|n\r1|2|a\r", {"csvsplit": "|"}, {"n": ["a"], OA_X: ["1"]}),
        # with srs EPSG:4326: parsed, %.7f; unparsable → both empty
        (
            "x,y,n\n1.5,2,a\nabc,2,b\n,,c\n",
            {"srs": "EPSG:4326"},
            {OA_X: ["1.5000000", "", ""], OA_Y: ["2.0000000", "", ""]},
        ),
        # a bare integer srs is accepted for CSV
        ("x,y,n\n1,2,a\n", {"srs": "4326"}, {OA_X: ["1.0000000"]}),
        ("x,y,n\n1,2,a\n", {"srs": 4326}, {OA_Y: ["2.0000000"]}),
        # duplicate header names: the last column wins (csv.DictReader)
        ("x,y,n,n\n1,2,a,b\n", {}, {"n": ["b"]}),
        # a regexp function object on a coordinate
        (
            "x,y\nE 12.5,2\n",
            {"lon": {"function": "regexp", "field": "x", "pattern": r"E (\S+)"}},
            {OA_X: ["12.5"]},
        ),
    ],
)
def test_csv_rules(
    tmp_path: Path, text: str, conform: dict[str, Any], expected: dict[str, list[str]]
) -> None:
    batch, _ = csv_batch(write_csv(tmp_path, text), **conform)
    for name, values in expected.items():
        assert batch.columns[name] == values, name


def test_csv_ragged_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = write_csv(tmp_path, "x,y,n,m\n1,2,a,b\n1,2,a,b,EXTRA\n3,4,c\n5\n7,8,d,e,f,g\n")

    batch, reader = csv_batch(path)

    assert reader.skipped == 2
    assert batch.columns["n"] == ["a", "c", ""]
    assert batch.columns["m"] == ["b", "", ""]
    assert batch.columns[OA_X] == ["1", "3", "5"]
    assert batch.columns[OA_Y] == ["2", "4", ""]
    assert "skipped 2 rows with more fields than the header" in caplog.text


@pytest.mark.parametrize(
    ("conform", "message"),
    [
        ({"skiplines": 1}, "skiplines needs headers"),
        ({"headers": 2, "skiplines": 1}, "headers 2 needs skiplines 2"),
        ({"headers": 0}, "invalid headers"),
        ({"headers": "1"}, "invalid headers"),
        ({"lon": None}, "CSV conform needs lon and lat"),
        ({"lat": ""}, "CSV conform needs lon and lat"),
        ({"lon": "east"}, "CSV lon column 'east' not found"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"csvsplit": ";;"}, "csvsplit must be one character"),
        ({"srs": "EPSG:abc"}, "unsupported srs"),
        ({"srs": "ESRI:102100"}, "unsupported srs"),
        ({"srs": "EPSG:999999"}, "unknown projection"),
    ],
)
def test_csv_conform_failures(tmp_path: Path, conform: dict[str, Any], message: str) -> None:
    path = write_csv(tmp_path, "x,y,n\n1,2,a\n")
    with pytest.raises(ConformError, match=message):
        csv_batch(path, **conform)


def test_undecodable_csv_names_the_line(tmp_path: Path) -> None:
    lines = [b"x,y,n"] + [b"1,2,fine"] * 5000 + [b"1,2,caf\xe9"] + [b"1,2,fine"] * 10
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")

    with pytest.raises(ConformError, match="cannot decode line 5002 of bad.csv as utf-8"):
        csv_batch(path)
    batch, _ = csv_batch(path, encoding="latin1")
    assert batch.columns["n"][5000] == "café"


@pytest.mark.parametrize(
    "text",
    [
        'x,y,n\n1,2,"ab"cd\n',  # text after a closing quote
        'x,y,n\n1,2,a"b"c\n',  # quotes inside an unquoted value
        'x,y,n\n1,2,"abc\n3,4,d\n',  # a quote that never closes
        'x,y,n\r1,2,"a\rb"\r3,4,c\r',  # CR line ends, CR inside quotes
        'x,y,n\r\n1,2,"a\r\nb"\r\n',
        'x,y,n\n1,2, "a,b"\n',  # a quote after a space does not quote: four fields, skipped
        'x,y,n\n1,2,""\n   \n1,2,"say ""hi"""\n',
        "x,y,n\n1,2,a\x00b\n",
        "x,y,n\n1,2,a",  # no final line end
        'x,y,n\n1,2,"a"b"c"\n',
    ],
)
def test_csv_records_match_the_csv_module(tmp_path: Path, text: str) -> None:
    expected = []
    for record in list(csv.reader(text.splitlines(keepends=True), strict=False))[1:]:
        if record and len(record) <= 3:
            expected.append((record + ["", ""])[:3])

    batch, _ = csv_batch(write_csv(tmp_path, text))

    assert [
        list(r) for r in zip(batch.columns[OA_X], batch.columns[OA_Y], batch.columns["n"], strict=True)
    ] == expected


@pytest.mark.parametrize("short_row_at", [5, 2995])
def test_csv_fallback_after_batches_were_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_row_at: int
) -> None:
    """Arrow refuses a short record (it must be padded); the csv module takes over without repeating rows."""
    import openaddr.readers.csvfile as csvfile

    monkeypatch.setattr(csvfile, "ARROW_BLOCK_SIZE", 1 << 12)  # many Arrow blocks in a small file
    lines = ["x,y,n"] + [f"{i},{i},row{i}" for i in range(3000)]
    lines[short_row_at + 1] = f"{short_row_at}"
    lines.insert(100, "1,2,3,4")  # a long record: skipped and counted once
    path = write_csv(tmp_path, "\n".join(lines) + "\n")
    expected = [r[2] if len(r) == 3 else "" for r in csv.reader(lines[1:]) if len(r) <= 3]

    reader = CsvReader(path, {"format": "csv", "lon": "x", "lat": "y"}, label=LABEL)
    batches = list(reader.batches(batch_size=500))

    assert [v for b in batches for v in b.columns["n"]] == expected
    assert reader.skipped == 1
    assert all(b.size == 500 for b in batches[:-1])


def test_csv_record_longer_than_an_arrow_block(tmp_path: Path) -> None:
    """A record larger than Arrow's block (a big polygon's WKT in an ESRI cache) is read whole by the csv module."""
    import openaddr.readers.csvfile as csvfile

    big = "POLYGON ((" + ", ".join(f"{i} {i}" for i in range(csvfile.ARROW_BLOCK_SIZE // 8)) + "))"
    assert len(big) > csvfile.ARROW_BLOCK_SIZE
    lines = ["x,y,n,wkt"] + [f"{i},{i},row{i},POINT ({i} {i})" for i in range(12000)]
    lines[6001] = f'6000,6000,row6000,"{big}"'
    path = write_csv(tmp_path, "\n".join(lines) + "\n")

    reader = CsvReader(path, {"format": "csv", "lon": "x", "lat": "y"}, label=LABEL)
    batches = list(reader.batches(batch_size=5000))

    assert [v for b in batches for v in b.columns["n"]] == [f"row{i}" for i in range(12000)]
    assert [len(v) for b in batches for v in b.columns["wkt"] if len(v) > 100] == [len(big)]


def test_csv_in_another_encoding_goes_through_arrow_too(tmp_path: Path) -> None:
    text = "x;y;straße\n" + "".join(f"{i};{i};Hauptstraße {i}\n" for i in range(1000))
    path = write_csv(tmp_path, text, "cp1252")
    with path.open(newline="", encoding="cp1252") as fh:
        expected = [r[2] for r in list(csv.reader(fh, delimiter=";"))[1:]]

    batch, _ = csv_batch(path, encoding="CP1252", csvsplit=";")

    assert batch.columns["straße"] == expected


@pytest.mark.parametrize(("encoding", "bad"), [("utf-8", b"\xff"), ("shift_jis", b"\x81\x20")])
def test_undecodable_byte_names_the_line_in_any_encoding(tmp_path: Path, encoding: str, bad: bytes) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"x,y,n\n1,2,a\n3,4,b" + bad + b"\n5,6,c\n")
    with pytest.raises(ConformError, match="cannot decode line 3 of bad.csv"):
        csv_batch(path, encoding=encoding)


@pytest.mark.parametrize(
    "spelling",
    [
        "EUCKR",
        "SHIFT_JISX0213",
        "ISO-8859-1",
        "CP949",
        "utf-8",
        "UTF-8",
        "latin-1",
        "latin1",
        "CP1251",
        "iso-8859-3",
        "utf-8-sig",
    ],
)
def test_every_corpus_encoding_spelling_resolves(tmp_path: Path, spelling: str) -> None:
    codec = codecs.lookup(spelling)
    samples = {
        "euc_kr": "서울",
        "cp949": "서울",
        "shift_jisx0213": "奈良",
        "cp1251": "Київ",
        "iso8859_3": "Ħal",
    }
    word = samples.get(codec.name.replace("-", "_"), "Zürich")
    path = write_csv(tmp_path, f"x,y,n\n1,2,{word}\n", codec.name)

    batch, _ = csv_batch(path, encoding=spelling)

    assert resolve_encoding(spelling, LABEL) == codec.name
    assert batch.columns["n"] == [word]


# --- ESRI cache CSV ----------------------------------------------------------------------------------------


def test_esri_cache_is_read_as_written(fixtures: Path) -> None:
    path = fixtures / "conforms" / "lake-man-split2.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    conform = json.loads((fixtures / "conforms" / "lake-man-split2.json").read_text())["conform"]

    addresses = read_all(path, conform, protocol="ESRI")
    parcels = read_all(path, conform, layer_type="parcels", protocol="ESRI")

    assert list(addresses.columns) == [c for c in rows[0] if not c.startswith("OA:")] + [OA_X, OA_Y]
    assert addresses.columns[OA_X] == [r["OA:x"] for r in rows]
    assert addresses.columns["MAILSTREET"] == [r["MAILSTREET"] for r in rows]
    assert parcels.columns[OA_GEOM] == [r["OA:geom"] for r in rows]
    assert parcels.geometries is not None
    assert [(g.x, g.y) for g in parcels.geometries] == [
        tuple(float(v) for v in r["OA:geom"][7:-1].split()[:2]) for r in rows
    ]


def test_esri_cache_srs_is_applied_to_coordinates_and_geometry(fixtures: Path, tmp_path: Path) -> None:
    """A server that answered in its own grid while labelling it 4326 (ua/63/city_of_kharkiv.json)."""
    page = json.loads((fixtures / "data" / "ua-kharkiv-0.json").read_text())
    features = [f for f in page["features"] if f.get("geometry")]
    points = [(f["geometry"]["x"], f["geometry"]["y"]) for f in features]
    lines = ["PREFIX,OA:x,OA:y,OA:geom"] + [
        f"{f['attributes']['PREFIX']},{x!r},{y!r},POINT ({x:.16g} {y:.16g})"
        for f, (x, y) in zip(features, points, strict=True)
    ]
    path = tmp_path / "cache.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    ex, ey = pyproj.Transformer.from_crs("EPSG:28467", "EPSG:4326", always_xy=True).transform(
        [p[0] for p in points], [p[1] for p in points]
    )
    conform = {"format": "geojson", "srs": "EPSG:28467"}

    batch = read_all(path, conform, layer_type="buildings", protocol="ESRI")

    assert batch.columns["PREFIX"] == [f["attributes"]["PREFIX"] for f in features]
    assert batch.columns[OA_X] == [f"{v:.7f}" for v in ex]
    assert batch.columns[OA_Y] == [f"{v:.7f}" for v in ey]
    assert batch.columns[OA_GEOM] == [f"POINT ({a:.16g} {b:.16g})" for a, b in zip(ex, ey, strict=True)]


def test_esri_cache_without_coordinates_fails(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,b\n1,2\n")
    with pytest.raises(ConformError, match="no OA:x column"):
        EsriReader(path, {"format": "geojson"}, layer_type="addresses", label=LABEL)


# --- GeoJSON ----------------------------------------------------------------------------------------------


def _feature(properties: dict[str, Any], point: tuple[float, float] | None) -> dict[str, Any]:
    geometry = None if point is None else {"type": "Point", "coordinates": list(point)}
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def test_geojson_null_geometries_are_skipped(fixtures: Path, tmp_path: Path) -> None:
    paths = prepare_input(
        fixtures / "data" / "us-mi-grand-traverse.geojson.zip", tmp_path, compression="zip", file=None
    )
    path = choose_input(paths, tmp_path, {"format": "geojson"}, "http")
    text = path.read_text()
    # the file carries a trailing comma that the json module refuses; count its features textually
    features = re.findall(r'\{"geometry": (null|\{)', text)

    with GeoJsonReader(path, {"format": "geojson"}, layer_type="addresses", label=LABEL) as reader:
        batches = list(reader.batches())
        assert reader.columns[:3] == ["ADDIDX", "ADDNUMB", "ZIP"]
    assert batches == []
    assert reader.skipped == len(features) == features.count("null") == 10


def test_geojson_polygons_give_exact_centroids(fixtures: Path) -> None:
    path = fixtures / "data" / "us-pa-bucks.geojson"
    document = json.loads(path.read_text())
    features = [f for f in document["features"] if f["geometry"]]
    names = list(document["features"][0]["properties"])

    batch = read_all(path, {"format": "geojson"})

    assert batch.size == len(features)
    for name in names:
        expected = [f["properties"].get(name) for f in features]
        assert batch.columns[name] == [_json_text(v) for v in expected], name
    for feature, x, y in zip(features, batch.columns[OA_X], batch.columns[OA_Y], strict=True):
        assert feature["geometry"]["type"] == "Polygon"
        cx, cy = _exact_centroid([[tuple(c) for c in ring] for ring in feature["geometry"]["coordinates"]])
        assert float(x) == pytest.approx(cx, abs=1e-11)
        assert float(y) == pytest.approx(cy, abs=1e-11)


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def test_geojson_columns_come_from_the_first_feature(tmp_path: Path) -> None:
    features = [
        _feature({"a": 1, "b": None, "c": True, "d": 1.0, "e": [1, "x"], "f": {"k": 2}}, (1, 2)),
        _feature({"a": "x", "z": "ignored"}, (3.5, -4)),
        _feature({"a": 2}, None),
        {
            "type": "Feature",
            "properties": {"a": 3},
            "geometry": {"type": "Polygon", "coordinates": "nonsense"},
        },
    ]
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))

    with GeoJsonReader(path, {"format": "geojson"}, layer_type="addresses", label=LABEL) as reader:
        batch = next(reader.batches())
        assert reader.columns == ["a", "b", "c", "d", "e", "f"]
    assert reader.skipped == 2
    assert batch.columns["a"] == ["1", "x"]
    assert batch.columns["b"] == ["", ""]
    assert batch.columns["c"] == ["True", ""]
    assert batch.columns["d"] == ["1.0", ""]
    assert batch.columns["e"] == [str([1, "x"]), ""]
    assert batch.columns["f"] == [str({"k": 2}), ""]
    assert batch.columns[OA_X] == ["1.0", "3.5"]
    assert batch.columns[OA_Y] == ["2.0", "-4.0"]


def test_geojson_srs_is_applied(tmp_path: Path) -> None:
    point = (565210.3, 4184173.2)
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature({"a": 1}, point)]}))
    ex, ey = pyproj.Transformer.from_crs("EPSG:3740", "EPSG:4326", always_xy=True).transform(*point)

    batch = read_all(path, {"format": "geojson", "srs": "EPSG:3740"})
    parcels = read_all(path, {"format": "geojson", "srs": "EPSG:3740"}, layer_type="parcels")

    assert batch.columns[OA_X] == [repr(ex)]
    assert batch.columns[OA_Y] == [repr(ey)]
    assert parcels.columns[OA_GEOM] == [f"POINT ({ex:.16g} {ey:.16g})"]


def test_broken_geojson_is_a_conform_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.geojson"
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"a": 1}, "geo'
    )
    with pytest.raises(ConformError, match="cannot parse GeoJSON"):
        read_all(path, {"format": "geojson"})


# --- dispatch -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "conform", "protocol", "kind"),
    [
        ("conforms/lake-man-split2.csv", {"format": "geojson"}, "ESRI", EsriReader),
        ("conforms/lake-man-split2.csv", {"format": "csv"}, "esri", EsriReader),
        ("conforms/lake-man-3740.csv", {"format": "csv", "lon": "lon", "lat": "lat"}, "http", CsvReader),
        ("data/us-pa-bucks.geojson", {"format": "geojson"}, "http", GeoJsonReader),
        ("conforms/lake-man.shp", {"format": "shapefile-polygon"}, "http", GdalReader),
        ("conforms/lake-man-gdb.gdb", {"format": "gdb"}, "ftp", GdalReader),
    ],
)
def test_open_reader_dispatch(
    fixtures: Path, name: str, conform: dict[str, Any], protocol: str, kind: type
) -> None:
    with open_reader(
        fixtures / name, conform, layer_type="addresses", protocol=protocol, label=LABEL
    ) as reader:
        assert isinstance(reader, kind)


@pytest.mark.parametrize("fmt", [None, "excel", "SHAPEFILE"])
def test_open_reader_unknown_format(fixtures: Path, fmt: str | None) -> None:
    with pytest.raises(UnknownFormatError):
        open_reader(
            fixtures / "conforms" / "lake-man.shp",
            {"format": fmt},
            layer_type="addresses",
            protocol="http",
            label=LABEL,
        )


# --- building blocks ------------------------------------------------------------------------------------------


def test_float_texts_equal_repr_at_every_magnitude() -> None:
    rng = random.Random(20250101)
    values = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 22) for _ in range(20_000)]
    values += [
        0.0,
        -0.0,
        5.0,
        -122.0,
        1e16,
        1e-5,
        1e22,
        123456789012345.6,
        0.1 + 0.2,
        float("nan"),
        float("inf"),
    ]
    values += [float(rng.randint(-(10**6), 10**6)) for _ in range(1000)]
    values += [rng.uniform(1, 10) * 10.0**k * rng.choice((-1, 1)) for k in range(-10, 20) for _ in range(500)]
    assert float_texts(np.array(values)) == [repr(v) for v in values]


def test_arrow_texts_follow_the_row_model() -> None:
    import datetime

    cases = [
        (pa.array([1, None, -7], pa.int64()), ["1", "", "-7"]),
        (pa.array([5.0, None, 0.1], pa.float64()), ["5.0", "", "0.1"]),
        (pa.array([0.5], pa.float32()), ["0.5"]),
        (pa.array([True, False, None]), ["True", "False", ""]),
        (pa.array([datetime.date(2003, 6, 12), None]), ["2003/06/12", ""]),
        (pa.array([datetime.datetime(2003, 6, 12, 7, 8, 9)], pa.timestamp("ms")), ["2003/06/12 07:08:09"]),
        (pa.array([["a", "b"], None], pa.list_(pa.string())), [str(["a", "b"]), ""]),
        (pa.array(["x", None]), ["x", ""]),
    ]
    for array, expected in cases:
        assert arrow_texts(array) == expected, array.type


def test_points_from_wkb_agrees_with_shapely() -> None:
    geoms = [shapely.Point(1.5, -2.25), None, shapely.Point(3, 4, 5), shapely.Point(-122.1234567, 37.7654321)]
    wkb = pa.array([None if g is None else shapely.to_wkb(g) for g in geoms], pa.binary())

    points = points_from_wkb(wkb)

    assert points is not None
    x, y = points
    expected_x = [np.nan if g is None else g.x for g in geoms]
    expected_y = [np.nan if g is None else g.y for g in geoms]
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert (
        points_from_wkb(pa.array([shapely.to_wkb(shapely.LineString([(0, 0), (1, 1)]))], pa.binary())) is None
    )
    assert points_from_wkb(pa.array([shapely.to_wkb(shapely.Point(1, 2), byte_order=0)], pa.binary())) is None


def test_centroid_falls_back_to_the_bounding_box_centre() -> None:
    # a ring of three points: GEOS 3.8 refused it ("Invalid number of points in LinearRing")
    three = struct.pack("<BIII", 1, 3, 1, 3) + struct.pack("<6d", 0, 0, 4, 0, 0, 0)
    # a ring that is not closed: GEOS cannot even read it
    unclosed = struct.pack("<BIII", 1, 3, 1, 4) + struct.pack("<8d", 0, 0, 4, 0, 4, 2, 1, 1)
    square = shapely.to_wkb(shapely.box(0, 0, 2, 2))
    geoms, broken = geometries_from_wkb([three, unclosed, square, None, shapely.to_wkb(shapely.Point())])

    x, y = centroids(geoms, broken)

    assert broken.tolist() == [False, True, False, False, False]
    assert x[:3].tolist() == [0 / 2 + 4 / 2, 0 / 2 + 4 / 2, 1.0]
    assert y[:3].tolist() == [0.0, 1.0, 1.0]
    assert np.isnan(x[3:]).all()
    assert np.isnan(y[3:]).all()


@pytest.mark.parametrize(
    ("wkt", "expected"),
    [
        ("POINT (-122.1234567 37.7654321)", "POINT (-122.1234567 37.7654321)"),
        ("POINT (94.9588628 1)", "POINT (94.95886280000001 1)"),  # %.16g is not the shortest form
        ("POINT (0.30000000000000004 2)", "POINT (0.3 2)"),
        ("POINT Z (1 2 3)", "POINT Z (1 2 3)"),
        ("MULTIPOINT ((1 2), (3 4))", "MULTIPOINT (1 2, 3 4)"),
        (
            "POLYGON ((0 0, 1 0, 1 1, 0 0), (0.25 0.25, 0.5 0.25, 0.25 0.25))",
            "POLYGON ((0 0, 1 0, 1 1, 0 0), (0.25 0.25, 0.5 0.25, 0.25 0.25))",
        ),
        ("LINESTRING (1e20 1.5e-07, 100000 -0.0001)", "LINESTRING (1e+20 1.5e-07, 100000 -0.0001)"),
        ("POLYGON EMPTY", "POLYGON EMPTY"),
    ],
)
def test_wkt_is_written_like_geos_3_8(wkt: str, expected: str) -> None:
    assert wkt_texts(np.array([shapely.from_wkt(wkt), None])) == [expected, ""]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Point", "Point"),
        ("Point Z", "Point 2.5D"),
        ("MultiPolygon Z", "MultiPolygon 2.5D"),
        ("Unknown", "Unknown"),
        (None, None),
    ],
)
def test_geometry_type_names(name: str | None, expected: str | None) -> None:
    assert geometry_type_name(name) == expected


@pytest.mark.parametrize("code", ["EPSG:26591", "EPSG:10288", "EPSG:2097", "EPSG:4612", "EPSG:4167"])
def test_corpus_srs_codes_resolve(code: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    crs = parse_srs(code, LABEL)
    assert crs.to_epsg() == int(code.split(":")[1])
    if code == "EPSG:26591":  # deprecated: resolves, with a WARNING naming the replacement
        assert "EPSG:3003" in caplog.text
