"""The quality gate's coverage check (:mod:`openaddr.coverage`): points outside the source's country.

Real runs of fixture sources are conformed and their ``stats.json`` read; moved points are placed in cities of other
countries, and border points at a measured distance from the 1:50m outline (shapely's own distance to the raw,
unbuffered country), so the expectations do not come from the code under test.
"""

from __future__ import annotations

import csv
import json
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import shapely

from openaddr import coverage
from openaddr.db.runs import insert_run
from openaddr.preview import basemap_topology, topology_polygons, topology_ring
from openaddr.process import conform_entry
from openaddr.quality import OUTSIDE_COVERAGE_KEY, gate_warning, review
from openaddr.sources import load_source

if TYPE_CHECKING:
    from pathlib import Path

    import sqlalchemy as sa


def run(fixtures: Path, folder: Path, source_name: str, data_name: str) -> tuple[dict[str, Any], str]:
    """Conform a fixture source (copied under ``folder``); its stats and log."""
    source = folder / "sources" / source_name
    source.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixtures / "sources" / source_name, source)
    data = shutil.copy(fixtures / "data" / data_name, folder / data_name)
    result = conform_entry(load_source(source).entries()[0], data, folder / "out")
    assert result.state["processed"] == "out.csv"
    return json.loads((folder / "out" / "stats.json").read_text()), (
        folder / "out" / "output.txt"
    ).read_text()


@pytest.fixture(scope="module")
def san_francisco(
    fixtures: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], str]:
    """The largest fixture's real run (7,284 addresses): its state directory, stats and log."""
    folder = tmp_path_factory.mktemp("sf")
    stats, log = run(fixtures, folder, "us-ca-san_francisco.json", "us-ca-san_francisco-excerpt.zip")
    return folder / "out", stats, log


def test_a_fixture_sources_real_run_is_inside_its_country(
    san_francisco: tuple[Path, dict[str, Any], str],
) -> None:
    out, stats, log = san_francisco
    assert stats["count"] == 7284
    assert (stats[OUTSIDE_COVERAGE_KEY], stats["coverage_country"]) == (0, "US")
    valid = stats["count"] - stats["invalid_coordinates"]
    assert (
        f"0 of {valid} points of us-ca-san_francisco addresses/primary are outside US (from coverage.country)"
        in log
    )
    assert review(stats, layer="addresses") == []


def test_an_overseas_department_is_inside_its_country(fixtures: Path, tmp_path: Path) -> None:
    """Réunion's addresses, coverage ``ISO 3166`` FR-974: Natural Earth draws Réunion as part of France."""
    stats, log = run(fixtures, tmp_path, "fr/la-réunion.json", "BAN_licence_gratuite_repartage_974.zip")
    assert stats["count"] > 0
    assert (stats[OUTSIDE_COVERAGE_KEY], stats["coverage_country"]) == (0, "FR")
    assert 'outside FR (from coverage "ISO 3166")' in log


# Cities well inside other countries than the United States.
ELSEWHERE = [(-99.13, 19.43), (-75.70, 45.42), (2.35, 48.86), (139.69, 35.69), (-58.38, -34.60)]


def test_two_percent_moved_to_other_countries_is_held_by_the_gate(
    san_francisco: tuple[Path, dict[str, Any], str], tmp_path: Path, db: sa.Connection
) -> None:
    """The same addresses as a CSV source, 2 % of them moved abroad, conformed for real, then judged by the gate."""
    out, _, _ = san_francisco
    with (out / "out.csv").open(newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if row["LON"] and row["LAT"]]
    moved = len(rows) * 2 // 100
    for i, row in enumerate(rows[:: len(rows) // moved][:moved]):
        row["LON"], row["LAT"] = map(str, ELSEWHERE[i % len(ELSEWHERE)])
    data = tmp_path / "moved.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["LON", "LAT", "NUMBER", "STREET"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    layer = {"name": "city", "protocol": "http", "data": "http://example.com/moved.csv"}
    layer["conform"] = {"format": "csv", "lon": "LON", "lat": "LAT", "number": "NUMBER", "street": "STREET"}
    source = tmp_path / "sources" / "us" / "ca" / "moved.json"
    source.parent.mkdir(parents=True)
    document = {"schema": 2, "coverage": {"country": "us", "US Census": {"geoid": "06075"}}}
    source.write_text(json.dumps({**document, "layers": {"addresses": [layer]}}))
    result = conform_entry(load_source(source).entries()[0], data, tmp_path / "out")
    assert result.ok
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["count"], stats[OUTSIDE_COVERAGE_KEY]) == (len(rows), moved)

    path = "sources/us/ca/moved.json"
    run_id = insert_run(db, source_path=path, source_layer="addresses", layer_name="city")
    warning = gate_warning(db, run_id, stats, source_path=path, source_layer="addresses", layer_name="city")
    share = 100 * moved / len(rows)
    assert 1.9 < share < 2.1
    assert warning == f"{moved:,} of {len(rows):,} rows ({share:.3g} %) are outside the source's coverage"


def raw_country(feature: str) -> Any:
    """A country of the basemap as it is drawn, without the buffer (rings as decoded, not unwrapped: good away
    from the antimeridian)."""
    topology, arcs = basemap_topology()
    return shapely.MultiPolygon(
        [
            shapely.Polygon(topology_ring(arcs, polygon[0]), [topology_ring(arcs, r) for r in polygon[1:]])
            for geometry in topology["objects"]["countries"]["geometries"]
            if geometry.get("id") == feature
            for polygon in topology_polygons(geometry)
        ]
    )


def test_points_just_across_a_border_within_the_buffer_are_not_counted() -> None:
    """Points in Canada north of the 49th parallel, and in Mexico south of the US border, against the US."""
    us = coverage.source_country({}, "sources/us/x.json")  # the country: no state folder
    assert isinstance(us, coverage.Country)
    assert us.feature == "840"
    border = raw_country("840")
    lon = np.array([-104.0, -104.0, -104.0, -104.0, -108.5, -108.5])
    lat = np.array([48.9, 49.04, 49.08, 49.25, 31.29, 31.05])
    distance = shapely.distance(border, shapely.points(lon, lat))
    outside = distance > coverage.BUFFER_DEGREES
    assert outside.tolist() == [
        False,
        False,
        False,
        True,
        False,
        True,
    ]  # the points are where they are meant to be
    assert distance[[1, 2, 4]].min() > 0.02  # … and the near ones really are across the border
    assert coverage.count_outside(us, lon, lat) == int(outside.sum()) == 2


def test_a_source_without_a_country_is_not_checked_and_the_log_says_why(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("X,Y,NUM,STREET\n2.35,48.86,1,Rue\n139.69,35.69,2,Dori\n")
    layer = {"name": "world", "protocol": "http", "data": "http://example.com/data.csv"}
    layer["conform"] = {"format": "csv", "lon": "X", "lat": "Y", "number": "NUM", "street": "STREET"}
    source = tmp_path / "sources" / "world" / "everywhere.json"
    source.parent.mkdir(parents=True)
    geometry = {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, -90]]]}
    source.write_text(json.dumps({"coverage": {"geometry": geometry}, "layers": {"addresses": [layer]}}))
    result = conform_entry(load_source(source).entries()[0], data, tmp_path / "out")
    assert result.ok
    assert result.state["preview"] == "preview.png"
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert OUTSIDE_COVERAGE_KEY not in stats
    assert "coverage_country" not in stats
    assert review(stats, layer="addresses") == []
    log = (tmp_path / "out" / "output.txt").read_text()
    assert (
        "No coverage check for everywhere addresses/world: the source's path 'world' is not a two-letter"
        in log
    )


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"coverage": {"ISO 3166": {"alpha2": "US-CA"}, "country": "mx"}}, "sources/fr/x.json", "US"),
        ({"coverage": {"ISO 3166": "NZ-WGN"}}, "x.json", "NZ"),
        ({"coverage": {"country": "ca"}}, "sources/us/x.json", "CA"),
        ({"coverage": {}}, "/tmp/a/sources/de/berlin.json", "DE"),
        ({"coverage": {"country": "uk"}}, "x.json", "GB"),
        ({"coverage": {"country": "xk"}}, "x.json", "XK"),
        ({"coverage": {"ISO 3166": {"alpha2": "RE"}}}, "x.json", "RE"),
        ({}, "sources/us-ca-berkeley.json", "it names no country"),
        ({}, "sources/world/x.json", "the source's path 'world' is not a two-letter country code"),
        ({"coverage": {"country": "gi"}}, "x.json", "coverage.country 'gi': the territory is too small"),
        (
            {"coverage": {"country": "zz"}},
            "x.json",
            "coverage.country 'zz' is not a country of Natural Earth",
        ),
    ],
)
def test_the_country_of_a_source(document: dict[str, Any], path: str, expected: str) -> None:
    country = coverage.source_country(document, path)
    if isinstance(country, coverage.Country):
        assert country.code == expected
        coverage.country_area(country.feature)  # a feature of the basemap
    else:
        assert country.reason.startswith(expected)


@pytest.mark.parametrize(
    ("code", "inside", "outside"),
    [
        # Fiji: Viti Levu, Taveuni, Vanua Levu's eastern tip east of 180°, the Lau islands, the sea just east of 180°
        # within the buffer of an islet drawn across it; not Tonga.
        (
            "FJ",
            [(178.0, -17.8), (179.95, -16.9), (-179.9, -16.8), (-178.8, -18.22), (-179.97, -16.48)],
            [(-175.2, -21.1)],
        ),
        # Russia: Chukotka on both sides of 180°; not Alaska.
        ("RU", [(177.5, 64.7), (-173.2, 64.4), (-179.5, 68.9)], [(-165.4, 64.5)]),
        # United States: the Aleutians west of 180° (Attu, Semisopochnoi) and Adak; not Chukotka.
        ("US", [(173.2, 52.9), (179.6, 51.97), (-176.65, 51.87)], [(-173.2, 64.4)]),
    ],
)
def test_countries_across_the_antimeridian(
    code: str, inside: list[tuple[float, float]], outside: list[tuple[float, float]]
) -> None:
    country = coverage.source_country({"coverage": {"country": code}}, "x.json")
    assert isinstance(country, coverage.Country)
    for points, expected in ((inside, 0), (outside, len(outside))):
        lon, lat = np.array(points).T
        assert coverage.count_outside(country, lon, lat) == expected, points


def test_cells_and_points_agree() -> None:
    """The cell shortcut gives what testing every point gives, over a box straddling the US coasts and borders."""
    area = coverage.country_area("840")
    rng = np.random.default_rng(14)
    lon, lat = rng.uniform(-125.0, -65.0, 200_000), rng.uniform(24.0, 50.0, 200_000)
    assert (coverage._inside(area, lon, lat) == shapely.contains_xy(area, lon, lat)).all()


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({}, "sources/us/ca/berkeley.json", "US-CA"),
        ({}, "sources/ca/on/toronto.json", "CA-ON"),
        ({}, "sources/au/nsw/sydney.json", "AU-NSW"),
        ({}, "sources/br/sp/sao_paulo.json", "BR-SP"),
        ({"coverage": {"ISO 3166": {"alpha2": "US-NV"}}}, "sources/us/ca/x.json", "US-NV"),
        ({}, "sources/us/countrywide.json", None),
        ({}, "sources/us/pr/x.json", None),
        ({}, "sources/de/be/berlin.json", None),
    ],
)
def test_the_subdivision_of_a_source(document: dict[str, Any], path: str, expected: str | None) -> None:
    country = coverage.source_country(document, path)
    assert isinstance(country, coverage.Country)
    assert country.subdivision == expected
    if expected:
        coverage.subdivision_area(expected)


def test_points_in_a_neighbouring_state_are_outside_a_states_source() -> None:
    """San Francisco's real points are inside California; the same points moved 4.5° east (into Nevada, checked
    against the shipped Nevada outline) are outside California, though inside the United States."""
    from shapely.geometry import shape

    features = {
        f["properties"]["code"]: shape(f["geometry"])
        for f in json.loads(coverage.SUBDIVISIONS.read_text())["features"]
    }
    ca = coverage.source_country({}, "sources/us/ca/san_francisco.json")
    assert isinstance(ca, coverage.Country)
    lon, lat = np.array([-122.42, -122.45, -122.40]), np.array([37.77, 37.75, 37.79])
    assert coverage.count_outside(ca, lon, lat) == 0
    moved = lon + 4.5
    assert shapely.contains_xy(features["US-NV"], moved, lat).all()
    assert (shapely.distance(features["US-CA"], shapely.points(moved, lat)) > coverage.BUFFER_DEGREES).all()
    assert coverage.count_outside(ca, moved, lat) == 3
    us = coverage.source_country({}, "sources/us/x.json")
    assert coverage.count_outside(us, moved, lat) == 0
