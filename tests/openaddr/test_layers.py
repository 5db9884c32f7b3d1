"""Parcels, buildings and centerlines end to end: full geometry in line-delimited GeoJSON (processing.md §8.3, §9.3).

Input: the Berkeley parcels excerpt of the original Machine's parcels module. Expected geometries are the source
polygons read with fiona and reprojected with pyproj directly, rounded to 7 decimals.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import fiona
import pyproj
import pytest

from openaddr.canonical import feature_hash
from openaddr.cli import main

if TYPE_CHECKING:
    from pathlib import Path

CONFORMS = {
    "parcels": {"format": "shapefile", "pid": "APN"},
    "buildings": {"format": "shapefile", "id": "APN", "height": "StreetNum", "levels": "Unit"},
    "centerlines": {
        "format": "shapefile",
        "id": "APN",
        "name": ["StreetName", "StreetSufx"],
        "oneway": "Dir",
    },
}
PROPERTIES = {
    "parcels": ["hash", "pid"],
    "buildings": ["hash", "id", "height", "levels"],
    "centerlines": [
        "hash", "id", "name", "oneway", "speed", "classification", "surface", "addr_from_left", "addr_to_left",
        "addr_from_right", "addr_to_right", "zip_left", "zip_right",
    ],
}  # fmt: skip


@pytest.fixture
def berkeley(fixtures: Path, tmp_path: Path) -> tuple[Path, Path]:
    parcels = fixtures / "parcels"
    original = json.loads((parcels / "sources" / "us" / "ca" / "berkeley.json").read_text())
    entry = {"name": "city", "protocol": "http", "compression": "zip", "data": original["data"]}
    layers = {layer: [dict(entry, conform=conform)] for layer, conform in CONFORMS.items()}
    source = tmp_path / "berkeley.json"
    source.write_text(json.dumps({"schema": 2, "coverage": original["coverage"], "layers": layers}))
    data = tmp_path / "berkeley.zip"
    shutil.copy(parcels / "data" / "us" / "ca" / "berkeley.zip", data)
    return source, data


def _rounded(coordinates: object) -> object:
    if isinstance(coordinates, (list, tuple)) and coordinates and isinstance(coordinates[0], float):
        return [round(c, 7) for c in coordinates]
    return [_rounded(c) for c in coordinates]  # type: ignore[union-attr]


@pytest.mark.parametrize("layer", sorted(CONFORMS))
def test_other_layers_keep_their_geometry(
    layer: str, berkeley: tuple[Path, Path], fixtures: Path, tmp_path: Path
):
    source, data = berkeley
    out = tmp_path / layer
    assert (
        main(
            ["conform", str(source), str(data), "--layer", layer, "--fingerprint", "f00d", "--out", str(out)]
        )
        == 0
    )
    keys, values = json.loads((out / "index.json").read_text())
    state = dict(zip(keys, values, strict=True))
    assert state["processed"] == "out.geojson"
    assert not (out / "out.csv").exists()
    assert not list(out.glob("*.zip"))
    features = [json.loads(line) for line in (out / "out.geojson").read_text(encoding="utf-8").splitlines()]

    shapefile = fixtures / "parcels" / "data" / "us" / "ca" / "berkeley" / "Parcels.shp"
    with fiona.open(shapefile) as src:
        records = list(src)
        to_wgs84 = pyproj.Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
    assert len(features) == len(records) == state["address count"]
    for feature, record in zip(features, records, strict=True):
        props = record.properties
        assert list(feature["properties"]) == PROPERTIES[layer]
        if layer == "parcels":
            assert feature["properties"]["pid"] == props["APN"]
        if layer == "centerlines":
            assert feature["properties"]["name"] == f"{props['StreetName']} {props['StreetSufx']}"
            assert feature["properties"]["speed"] == ""
        assert feature["geometry"]["type"] == record.geometry.type
        rings = [
            [list(to_wgs84.transform(x, y)) for x, y, *_ in ring] for ring in record.geometry.coordinates
        ]
        got = [xy for ring in feature["geometry"]["coordinates"] for xy in ring]
        expected = [xy for ring in _rounded(rings) for xy in ring]  # type: ignore[union-attr]
        assert len(got) == len(expected)
        for point, want in zip(got, expected, strict=True):
            assert point == pytest.approx(want, abs=1.5e-7)  # PROJ versions may differ in the last digit
        # HASH per §8.3: the sorted properties and the rounded geometry's WKT, seeded by the fingerprint.
        shape = __import__("shapely").geometry.shape(feature["geometry"])
        properties = {k: v for k, v in feature["properties"].items() if k != "hash"}
        assert feature["properties"]["hash"] == feature_hash("f00d", properties, shape.wkt)
