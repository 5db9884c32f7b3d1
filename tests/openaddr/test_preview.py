"""The preview image of a run (openaddr/preview.py): decoded with Pillow, pixels checked against the projection.

Expected pixels are computed independently of the module: longitude and latitude through pyproj's EPSG:3857 (Web
Mercator), divided by its sphere's radius, then placed with the view's origin and scale.
"""

from __future__ import annotations

import io
import json
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pyproj
import pytest
import shapely
from PIL import Image

from openaddr import preview
from openaddr.process import conform_entry
from openaddr.sources import load_source

if TYPE_CHECKING:
    from pathlib import Path

RADIUS = 6378137.0
TO_MERCATOR = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


def expected_pixel(view: preview.Viewport, lon: float, lat: float) -> tuple[int, int]:
    """The pixel of a point, from pyproj's Web Mercator rather than the module's own formula."""
    x, y = TO_MERCATOR.transform(lon, lat)
    return int(np.floor((x / RADIUS - view.x0) * view.scale)), int(
        np.floor((view.y1 - y / RADIUS) * view.scale)
    )


def decode(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    assert image.format == "PNG"
    assert image.size == (preview.WIDTH, preview.HEIGHT) == (1024, 768)
    return image.convert("RGB")


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = ["LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH"]
    lines += [f"{lon},{lat},1,Main St,,,,,,,h{i}" for i, (lon, lat) in enumerate(rows)]
    path.write_text("\r\n".join(lines) + "\r\n")


def view_of(lons: list[float], lats: list[float]) -> preview.Viewport:
    return preview.Viewport.of_points(*preview.mercator(np.array(lons), np.array(lats)))


# Portland, Oregon: a handful of addresses, plus rows whose coordinates are not valid.
PORTLAND = [(-122.6765, 45.5231), (-122.65, 45.51), (-122.70, 45.54), (-122.60, 45.49), (-122.68, 45.56)]
INVALID = [("", ""), ("abc", "45.5"), ("-122.6", "95"), ("nan", "inf"), ("200", "10")]


def test_points_are_drawn_where_they_are_and_nowhere_else(tmp_path: Path) -> None:
    write_csv(tmp_path / "out.csv", [(str(lon), str(lat)) for lon, lat in PORTLAND] + INVALID)
    path = preview.render_state_preview(tmp_path, "addresses")
    assert path == tmp_path / "preview.png"
    image = decode(path)
    lons, lats = zip(*PORTLAND, strict=True)
    view = view_of(list(lons), list(lats))
    basemap = preview.render_basemap(view)
    for lon, lat in PORTLAND:
        column, row = expected_pixel(view, lon, lat)
        assert 0 <= column < 1024
        assert 0 <= row < 768
        assert image.getpixel((column, row)) != basemap.getpixel((column, row)), (lon, lat)
        assert image.getpixel((column, row)) == preview.MARKER_FILL  # few points: markers
    # Far from every point the image is the basemap, pixel for pixel.
    corner = (0, 0, 60, 60)
    assert np.array_equal(np.asarray(image.crop(corner)), np.asarray(basemap.crop(corner)))
    # The basemap is Natural Earth's: Portland is on land, and the Pacific is west of the view.
    assert basemap.getpixel(expected_pixel(view, -122.6765, 45.5231)) == preview.LAND


def test_many_points_are_a_density(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    lon = np.concatenate([rng.normal(2.35, 0.02, 150_000), rng.uniform(2.0, 2.7, 50_000)])
    lat = np.concatenate([rng.normal(48.85, 0.015, 150_000), rng.uniform(48.6, 49.1, 50_000)])
    image = preview.render_points(lon, lat)
    assert image is not None
    assert image.size == (1024, 768)
    view = view_of(list(lon), list(lat))
    basemap = preview.render_basemap(view)
    pixels = np.asarray(image)
    background = np.asarray(basemap)
    for i in range(0, 200_000, 9_973):
        column, row = expected_pixel(view, float(lon[i]), float(lat[i]))
        assert tuple(pixels[row, column]) != tuple(background[row, column]), i
    # The dense cluster is darker than a sparse pixel of the uniform spread (the ramp runs light to dark).
    centre = expected_pixel(view, 2.35, 48.85)
    sparse = expected_pixel(view, float(lon[-1]), float(lat[-1]))
    assert int(pixels[centre[1], centre[0]].astype(int).sum()) < int(
        pixels[sparse[1], sparse[0]].astype(int).sum()
    )
    # The padding around the data's extent is the basemap.
    assert np.array_equal(pixels[:, -3:], background[:, -3:])
    assert np.array_equal(pixels[:3], background[:3])


def test_far_flung_mistakes_do_not_set_the_extent() -> None:
    lon = np.concatenate([np.full(1000, -122.6) + np.linspace(0, 0.1, 1000), [0.0]])
    lat = np.concatenate([np.full(1000, 45.5) + np.linspace(0, 0.1, 1000), [0.0]])
    view = view_of(list(lon), list(lat))
    west, south, east, north = view.lonlat_bounds()
    # The point at (0, 0) is left out.
    assert -123 < west < east < -122
    assert 45 < south < north < 46


def feature_lines(geometries: list[shapely.Geometry]) -> str:
    return "".join(
        f'{{"type":"Feature","geometry":{shapely.to_geojson(g)},"properties":{{"hash":"h{i}","id":""}}}}\n'
        for i, g in enumerate(geometries)
    )


def test_lines_draw_their_whole_length(tmp_path: Path) -> None:
    roads = [
        shapely.LineString([(-0.2, 51.45), (0.05, 51.55), (0.1, 51.5)]),
        shapely.LineString([(-0.15, 51.6), (-0.15, 51.4)]),
    ]
    (tmp_path / "out.geojson").write_text(
        feature_lines(roads) + '{"type":"Feature","geometry":null,"properties":{}}\n'
    )
    image = decode(preview.render_state_preview(tmp_path, "centerlines") or tmp_path / "missing")
    bounds = shapely.bounds(shapely.GeometryCollection(roads))
    west, south = preview.mercator(bounds[0], bounds[1])
    east, north = preview.mercator(bounds[2], bounds[3])
    view = preview.Viewport.fit(float(west), float(south), float(east), float(north))
    basemap = preview.render_basemap(view)
    for road in roads:
        for fraction in np.linspace(0.05, 0.95, 19):
            point = road.interpolate(fraction, normalized=True)
            column, row = expected_pixel(view, point.x, point.y)
            assert image.getpixel((column, row)) != basemap.getpixel((column, row)), (road, fraction)
    assert image.getpixel((1000, 740)) == basemap.getpixel((1000, 740))


@pytest.fixture
def berkeley_parcels(fixtures: Path, tmp_path: Path) -> Path:
    parcels = fixtures / "parcels"
    original = json.loads((parcels / "sources" / "us" / "ca" / "berkeley.json").read_text())
    entry = {"name": "city", "protocol": "http", "compression": "zip", "data": original["data"]}
    layers = {"parcels": [dict(entry, conform={"format": "shapefile", "pid": "APN"})]}
    source = tmp_path / "berkeley.json"
    source.write_text(json.dumps({"schema": 2, "coverage": original["coverage"], "layers": layers}))
    data = tmp_path / "berkeley.zip"
    shutil.copy(parcels / "data" / "us" / "ca" / "berkeley.zip", data)
    result = conform_entry(load_source(source).entries()[0], data, tmp_path / "out")
    assert result.ok
    return tmp_path / "out"


def test_parcels_are_drawn_as_outlines(berkeley_parcels: Path) -> None:
    keys, values = json.loads((berkeley_parcels / "index.json").read_text())
    assert dict(zip(keys, values, strict=True))["preview"] == "preview.png"
    # The coverage check counted the parcels (the centres of their bounds) while the preview read them.
    stats = json.loads((berkeley_parcels / "stats.json").read_text())
    assert (stats["outside_coverage"], stats["coverage_country"]) == (0, "US")
    image = decode(berkeley_parcels / "preview.png")
    polygons = [
        shapely.from_geojson(json.dumps(json.loads(line)["geometry"]))
        for line in (berkeley_parcels / "out.geojson").read_text().splitlines()
    ]
    bounds = shapely.bounds(shapely.GeometryCollection(polygons))
    west, south = preview.mercator(bounds[0], bounds[1])
    east, north = preview.mercator(bounds[2], bounds[3])
    view = preview.Viewport.fit(float(west), float(south), float(east), float(north))
    basemap = preview.render_basemap(view)
    drawn = 0
    for polygon in shapely.get_parts(polygons):
        ring = np.asarray(polygon.exterior.coords)
        for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
            column, row = expected_pixel(view, (x0 + x1) / 2, (y0 + y1) / 2)
            assert image.getpixel((column, row)) != basemap.getpixel((column, row))
            drawn += 1
        # Outlines, not fills: the middle of a parcel many pixels across stays basemap.
        inside = polygon.representative_point()
        column, row = expected_pixel(view, inside.x, inside.y)
        left, top = expected_pixel(view, polygon.bounds[0], polygon.bounds[3])
        right, bottom = expected_pixel(view, polygon.bounds[2], polygon.bounds[1])
        if min(right - left, bottom - top) > 8:
            assert image.getpixel((column, row)) == basemap.getpixel((column, row))
    assert drawn >= 12


def test_no_valid_coordinates_no_preview(tmp_path: Path) -> None:
    write_csv(tmp_path / "out.csv", INVALID)
    assert preview.render_state_preview(tmp_path, "addresses") is None
    assert not (tmp_path / "preview.png").exists()
    (tmp_path / "out.geojson").write_text('{"type":"Feature","geometry":null,"properties":{"hash":"x"}}\n')
    assert preview.render_state_preview(tmp_path, "buildings") is None
    assert not (tmp_path / "preview.png").exists()


def test_a_run_without_valid_coordinates_says_so(tmp_path: Path) -> None:
    """A real conform whose rows all lack coordinates: processed, but no preview, and the log says why."""
    data = tmp_path / "data.csv"
    data.write_text("X,Y,NUM,STREET\n,,1,Main St\n,,2,Main St\nabc,def,3,Main St\n")
    layer = {"name": "city", "protocol": "http", "data": "http://example.com/data.csv"}
    layer["conform"] = {"format": "csv", "lon": "X", "lat": "Y", "number": "NUM", "street": "STREET"}
    source = tmp_path / "nowhere.json"
    document = {
        "schema": 2,
        "coverage": {"country": "us", "US Census": {"geoid": "1"}},
        "layers": {"addresses": [layer]},
    }
    source.write_text(json.dumps(document))
    result = conform_entry(load_source(source).entries()[0], data, tmp_path / "out")
    assert result.ok
    assert result.state["address count"] == 3
    assert result.state["preview"] is None
    assert not (tmp_path / "out" / "preview.png").exists()
    assert (
        "No preview: no row of nowhere addresses/city has valid coordinates"
        in (tmp_path / "out" / "output.txt").read_text()
    )


def test_the_basemap_crosses_the_antimeridian() -> None:
    # Russia's and Fiji's rings cross 180°: they must not draw a line across the world (open oceans stay sea),
    # and Chukotka is land on both sides of it.
    (west, east), (south, north) = preview.mercator([-180.0, 180.0], [-60.0, 80.0])
    view = preview.Viewport.fit(float(west), float(south), float(east), float(north))
    image = preview.render_basemap(view)
    for lon, lats in ((-100.0, range(-40, -5)), (0.0, range(62, 76))):  # the South Pacific, the Norwegian Sea
        for lat in lats:
            assert image.getpixel(expected_pixel(view, lon, lat + 0.5)) == preview.SEA, (lon, lat)
    for lon, lat in ((-175.0, 66.0), (-178.0, 68.0), (179.0, 68.0)):
        assert image.getpixel(expected_pixel(view, lon, lat)) == preview.LAND


def test_coordinates_read_as_numbers_or_as_text_agree(tmp_path: Path) -> None:
    import pyarrow as pa

    rows = [(str(lon), str(lat)) for lon, lat in PORTLAND] + [("", ""), ("-122.6", "95"), ("1e1", "+2.5")]
    write_csv(tmp_path / "out.csv", rows)
    fast = preview.read_csv_points(tmp_path / "out.csv")  # every value a number or blank: parsed as numbers
    text = preview._read_csv_columns(tmp_path / "out.csv", pa.string())
    assert np.array_equal(fast[0], text[0])
    assert np.array_equal(fast[1], text[1])
    assert fast[0].tolist() == [lon for lon, _ in PORTLAND] + [10.0]
    write_csv(tmp_path / "out.csv", [*rows, ("abc", "45")])  # not a number: read as text, the same points
    again = preview.read_csv_points(tmp_path / "out.csv")
    assert np.array_equal(again[0], fast[0])


def test_outlines_sampled_in_batches_count_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x, y = preview.mercator(rng.uniform(-1, 1, 20_000), rng.uniform(-1, 1, 20_000))
    line = np.repeat(np.arange(5_000), 4)  # 5,000 lines of 4 vertices, segments hundreds of pixels long
    view = preview.Viewport.fit(float(x.min()), float(y.min()), float(x.max()), float(y.max()))
    whole = preview.Canvas(view)
    whole.add_segments(x, y, line)
    monkeypatch.setattr(preview, "SAMPLE_BATCH", 1_000)
    batched = preview.Canvas(view)
    batched.add_segments(x, y, line)
    assert whole.counts.sum() > 15_000 * 100
    assert np.array_equal(whole.counts, batched.counts)
