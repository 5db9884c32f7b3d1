"""End to end: ``openaddr conform`` on every fixture source whose data is in ``fixtures/machine/data``.

Expected values are read from the input data with independent routes (fiona's own GDAL, the stdlib ``csv`` and
``json`` modules, pyproj directly), never copied from our output.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from typing import TYPE_CHECKING

import fiona
import pyproj
import pytest

from openaddr.cli import main
from tests.fixture_cases import CASES

if TYPE_CHECKING:
    from pathlib import Path


def _entry(source: Path) -> dict:
    doc = json.loads(source.read_text(encoding="utf-8"))
    return doc if "layers" not in doc else doc["layers"]["addresses"][0]


def _extract(zip_path: Path, into: Path) -> list[Path]:
    """Every file of a zip, nested zips expanded, with the stdlib only."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(into)
    files = []
    for path in sorted(into.rglob("*")):
        if path.is_file() and path.suffix.lower() == ".zip":
            files += _extract(path, path.with_suffix(""))
        elif path.is_file():
            if path.suffix != path.suffix.lower():  # fiona's GDAL wants lower-case .shp companions
                path = path.rename(path.with_suffix(path.suffix.lower()))
            files.append(path)
    return files


def _find(files: list[Path], root: Path, conform: dict) -> Path:
    """The input an author would pick by hand: ``file`` when given, else by the format's extension."""
    if conform.get("file"):
        wanted = conform["file"].lower()
        for path in files:
            rel = path.relative_to(root).as_posix().lower()
            if rel.endswith(wanted) or ".gdb/" in rel and rel.split(".gdb/")[0] + ".gdb" == wanted:
                return path
    extensions = {
        "shapefile": (".shp",),
        "shapefile-polygon": (".shp",),
        "csv": (".csv", ".txt", ".dsv"),
        "geojson": (".geojson", ".json"),
        "xml": (".gml",),
        "gdb": (".gdbtable",),
    }[conform["format"]]
    found = [p for p in files if p.suffix.lower() in extensions]
    if conform["format"] == "gdb":
        return next(p.parent for p in found if p.parent.suffix.lower() == ".gdb")
    return found[0]


def _independent_records(path: Path, conform: dict) -> tuple[list[dict], object]:
    """(records as dicts of raw values, CRS of the coordinates) read without our code."""
    fmt = conform["format"]
    if fmt == "csv":
        encoding = conform.get("encoding", "utf-8-sig")
        with path.open(encoding=encoding, newline="") as fh:
            rows = [r for r in csv.reader(fh, delimiter=conform.get("csvsplit", ",")) if r]
        header = rows[0]
        return [dict(zip(header, r, strict=False)) for r in rows[1:] if len(r) <= len(header)], None
    if fmt == "geojson":
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [
            f["properties"] | {"__geometry": f["geometry"]} for f in doc["features"] if f["geometry"]
        ], None
    kwargs = {"layer": conform["layer"]} if "layer" in conform else {}
    with fiona.open(path, **kwargs) as src:
        records = [dict(f.properties) | {"__geometry": f.geometry} for f in src]
        crs = conform.get("srs") or src.crs.to_string()
    return records, crs


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _field(record: dict, name: str) -> object:
    """A record's field: exact name, else case-insensitive (the spec's lookup, §7.3)."""
    if name in record:
        return record[name]
    return next((v for k, v in record.items() if k.lower() == name.lower()), None)


@pytest.mark.parametrize(("source_name", "data_name", "problem"), CASES, ids=[c[0] for c in CASES])
def test_fixture_source_conforms(source_name, data_name, problem, fixtures: Path, tmp_path: Path):
    source = fixtures / "sources" / source_name
    data = tmp_path / data_name
    shutil.copy(fixtures / "data" / data_name, data)
    out = tmp_path / "out"
    status = main(["conform", str(source), str(data), "--layer", "addresses", "--out", str(out)])
    keys, values = json.loads((out / "index.json").read_text())
    state = dict(zip(keys, values, strict=True))
    assert (out / "output.txt").is_file()
    if problem:
        assert (status, state["source problem"]) == (1, problem)
        assert not (out / "out.csv").exists()
        return
    assert status == 0, (out / "output.txt").read_text()
    # A missing coverage accompanies a success (processing.md §10.1); many old fixtures have none.
    assert state["source problem"] in (None, "Missing or incomplete coverage")

    conform = _entry(source)["conform"]
    files = _extract(data, tmp_path / "independent")
    records, crs = _independent_records(_find(files, tmp_path / "independent", conform), conform)
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) == state["address count"]
    assert state["fingerprint"]
    assert all(len(r["HASH"]) == 16 for r in rows)

    # Plain field mappings: the first record's texts, trimmed, as the spec's canonicalisation says.
    first = records[0]
    if isinstance(conform.get("number"), str):
        expected = _text(_field(first, conform["number"])).strip()
        assert rows[0]["NUMBER"] == (expected[:-2] if expected.endswith(".0") else expected)
    street = conform.get("street")
    if isinstance(street, list) and all(isinstance(s, str) for s in street):
        assert rows[0]["STREET"] == " ".join(_text(_field(first, s)) for s in street).strip()
    elif isinstance(street, str):
        assert rows[0]["STREET"] == _text(_field(first, street)).strip()

    # Coordinates: a point projected with pyproj directly.
    geometry = first.get("__geometry")
    if geometry is not None and geometry["type"] == "Point" and crs is not None:
        x, y = geometry["coordinates"][:2]
        lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        assert float(rows[0]["LON"]) == pytest.approx(lon, abs=2e-7)
        assert float(rows[0]["LAT"]) == pytest.approx(lat, abs=2e-7)
    elif conform["format"] == "csv" and "srs" not in conform:
        assert float(rows[0]["LON"]) == pytest.approx(
            float(first[conform["lon"]].replace(",", ".")), abs=1e-7
        )

    # Every address layer also has its GeoJSON lines, its packaged zip and its sample.
    with (out / "out.geojson").open(encoding="utf-8") as fh:
        features = [json.loads(line) for line in fh]
    assert [f["properties"]["hash"] for f in features] == [r["HASH"] for r in rows]
    assert state["processed"] == "out.csv"
    assert state["sample"] == "sample.json"
    sample = json.loads((out / "sample.json").read_text())
    assert 2 <= len(sample) <= 6
    assert len(list(out.glob("*.zip"))) == 1


CONFORMS = {
    "jp-nara.json": "jp-nara.csv",
    "lake-man-3740.json": "lake-man-3740.csv",
    "lake-man-epsg26943-noprj.json": "lake-man-epsg26943-noprj.shp",
    "lake-man-epsg26943.json": "lake-man-epsg26943.shp",
    "lake-man-gdb.json": "lake-man-gdb.gdb",
    "lake-man-gml.json": "lake-man-gml.gml",
    "lake-man-merge-postcode.json": "lake-man-merge-postcode.shp",
    "lake-man-merge-postcode2.json": "lake-man-merge-postcode2.shp",
    "lake-man-split.json": "lake-man-split.shp",
    "lake-man-split2.json": "lake-man-split2.csv",
    "lake-man-utf8.json": "lake-man-utf8.shp",
    "lake-man.json": "lake-man.shp",
}


def test_every_conform_fixture_is_covered(fixtures: Path):
    assert sorted(p.name for p in (fixtures / "conforms").glob("*.json")) == sorted(CONFORMS)


@pytest.mark.parametrize(("source_name", "input_name"), sorted(CONFORMS.items()))
def test_conform_fixture(source_name, input_name, fixtures: Path, tmp_path: Path):
    conforms = fixtures / "conforms"
    stem = input_name.rsplit(".", 1)[0]
    for path in conforms.glob(f"{stem}.*"):
        if path.is_dir():
            shutil.copytree(path, tmp_path / path.name)
        elif not path.name.endswith(".json"):
            shutil.copy(path, tmp_path / path.name)
    data = tmp_path / input_name
    out = tmp_path / "out"
    status = main(
        ["conform", str(conforms / source_name), str(data), "--layer", "addresses", "--out", str(out)]
    )
    keys, values = json.loads((out / "index.json").read_text())
    state = dict(zip(keys, values, strict=True))
    assert status == 0, (out / "output.txt").read_text()
    assert state["source problem"] in (None, "Missing or incomplete coverage")

    conform = json.loads((conforms / source_name).read_text(encoding="utf-8"))["conform"]
    if data.suffix == ".csv":
        encoding = conform.get("encoding", "utf-8")
        with data.open(
            encoding="shift_jisx0213" if encoding == "SHIFT_JISX0213" else encoding, newline=""
        ) as fh:
            records = list(csv.DictReader(fh))
    else:
        with fiona.open(tmp_path / input_name) as src:
            records = [dict(f.properties) for f in src]
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) == state["address count"]
    if isinstance(conform.get("number"), str):
        expected = [_text(r.get(conform["number"])).strip() for r in records]
        assert [r["NUMBER"] for r in rows] == [e[:-2] if e.endswith(".0") else e for e in expected]
    assert any(r["LON"] and r["LAT"] for r in rows)
