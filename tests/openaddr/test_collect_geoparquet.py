"""The GeoParquet collections (issue 13, 2a): the curve, the external sort, and collect's files on SQLite and
PostgreSQL, read back with pyarrow, DuckDB and GeoPandas, their ``geo`` metadata validated against the GeoParquet 1.1.0 JSON
schema (``tests/data/geoparquet``).

GDAL cannot be checked here: the GDAL inside the pyogrio wheel (and Debian bookworm's 3.6) has no Parquet driver
(``test_gdal_reads_the_files`` skips saying so, and runs where a GDAL has one).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import sqlalchemy as sa
from hypothesis import given, settings, strategies as st

from openaddr.collect import COLLECTIONS_FOLDER, collect
from openaddr.collect.areas import AREAS
from openaddr.collect.geoparquet import (
    ADDRESS_ATTRIBUTES,
    Entry,
    GeoParquetCollections,
    curve_keys,
    hilbert_index,
    parquet_name,
    stable_order,
)
from openaddr.collect.parquet_parts import PartedParquetWriter
from openaddr.db import make_engine, upgrade
from openaddr.db.collect import current_zips
from openaddr.db.jobs import complete_set, create_set
from openaddr.storage import LocalStorage
from tests.db_fixtures import BACKENDS, create_database, drop_database
from tests.openaddr.test_collect import ALAMEDA, BERLIN, COMMIT, NOW, TEXAS_LEGACY_CSV, World, rows_near

if TYPE_CHECKING:
    from collections.abc import Iterator

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "geoparquet" / "schema-1.1.0.json").read_text())
HEADER = "LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH\r\n"

# --------------------------------------------------------------------------------------------------------------
# The curve


@pytest.mark.parametrize("order", [1, 2, 3, 4, 6])
def test_hilbert_index_is_a_hilbert_curve(order: int) -> None:
    """On a 2**order grid (the top bits of the 32-bit axes), the indices are a permutation of the cells and
    consecutive indices are neighbouring cells: a continuous space-filling curve."""
    side = 1 << order
    xs, ys = (a.ravel().astype(np.uint64) for a in np.meshgrid(np.arange(side), np.arange(side)))
    shift = np.uint64(32 - order)
    index = hilbert_index(xs << shift, ys << shift) >> np.uint64(64 - 2 * order)
    assert sorted(index.tolist()) == list(range(side * side))
    order_of = np.argsort(index)
    steps = np.abs(np.diff(xs[order_of].astype(int))) + np.abs(np.diff(ys[order_of].astype(int)))
    assert (steps == 1).all()


def test_hilbert_index_refines_its_cells() -> None:
    """A point's index at full precision starts with the index of the coarse cell holding it."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2**32, 2000, dtype=np.uint64)
    y = rng.integers(0, 2**32, 2000, dtype=np.uint64)
    for bits in (1, 5, 16):
        drop = np.uint64(32 - bits)
        coarse = hilbert_index((x >> drop) << drop, (y >> drop) << drop)
        keep = np.uint64(64 - 2 * bits)
        assert ((hilbert_index(x, y) >> keep) == (coarse >> keep)).all()


@pytest.mark.parametrize(
    ("size", "distinct"), [(0, 1), (1, 1), (2, 1), (5000, 2**62), (5000, 300), (5000, 3)]
)
def test_stable_order_is_numpys_stable_argsort(size: int, distinct: int) -> None:
    """Equal keys (the same point, e.g. the units of a building) keep the order their rows came in."""
    keys = np.random.default_rng(size + distinct).integers(0, distinct, size).astype(np.uint64)
    assert stable_order(keys).tolist() == np.argsort(keys, kind="stable").tolist()


# --------------------------------------------------------------------------------------------------------------
# The external sort, on one collection


def _city_rows(rng: np.random.Generator, lon: float, lat: float, count: int, prefix: str) -> list[str]:
    lons = lon + rng.uniform(-0.05, 0.05, count)
    lats = lat + rng.uniform(-0.05, 0.05, count)
    return [
        f"{x:.6f},{y:.6f},{i},{prefix} St,,,,,,{prefix}{i},{prefix}h{i}\r\n"
        for i, (x, y) in enumerate(zip(lons, lats, strict=True))
    ]


@pytest.fixture(scope="module")
def sorted_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GeoParquetCollections, int]:
    """4,000 rows in four cities 100 km+ apart, shuffled, with hostile records, read in blocks of 4 KiB (a quoted
    line break may fall at a block's end) through a tiny buffer (spills and merge passes) into row groups of
    500."""
    folder = tmp_path_factory.mktemp("sorted")
    rng = np.random.default_rng(11)
    rows = [
        *_city_rows(rng, -122.3, 37.8, 1000, "oak"),
        *_city_rows(rng, -74.0, 40.7, 1000, "nyc"),
        *_city_rows(rng, 13.4, 52.5, 1000, "ber"),
        *_city_rows(rng, 151.2, -33.9, 1000, "syd"),
    ]
    rng.shuffle(rows)  # type: ignore[arg-type]
    hostile = [
        '-122.3,37.8,1,"Main St, Rear",,"Oak\r\nland",,,,q1,qh1\r\n',  # a comma and a line break in quotes
        '-122.3,37.8,2,"The ""Oaks""",B,,,,,q2,qh2\r\n',  # doubled quotes
        "-122.3,37.8,3,Short Row\r\n",  # fewer fields: kept, the rest empty (the zips pad it too)
        "-122.3,37.8,4,Long,,,,,,q4,qh4,extra,more\r\n",  # more fields: kept, cut
        "nan,37.8,5,Bad,,,,,,q5,qh5\r\n",  # dropped
        "-122.3,91,6,Bad,,,,,,q6,qh6\r\n",  # dropped
        "\r\n",  # a blank line: no record
    ]
    path = folder / "run.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xx/cities.csv", HEADER + "".join(rows[:2000] + hostile + rows[2000:]))
    collections = GeoParquetCollections(
        folder / "out", buffer_bytes=40_000, row_group_rows=500, merge_fan_in=3, block_bytes=4096, workers=0
    )
    collections.add_collection("global", "", "addresses")
    added, dropped = collections.add_run_zip(
        path, Entry("sources/xx/cities.json", "addresses", "primary", 42), [("global", "", "addresses")]
    )
    assert (added, dropped) == (4004, 2)
    files = collections.close()
    assert list((folder / "out").iterdir()) == [files["global", "", "addresses"].path]  # spill runs removed
    return files["global", "", "addresses"].path, collections, added


def test_external_sort_spills_and_merges(sorted_file: tuple[Path, GeoParquetCollections, int]) -> None:
    path, collections, added = sorted_file
    assert collections.spills > 3 * 3  # runs beyond the fan-in, so a merge pass wrote runs of its own
    table = pq.read_table(path)
    assert table.num_rows == added
    keys = curve_keys(
        *(table.column("bbox").combine_chunks().field(n).to_numpy() for n in ("xmin", "ymin", "xmax", "ymax"))
    )
    assert (keys[1:] >= keys[:-1]).all()  # the curve's order
    bbox = table.column("bbox").combine_chunks()
    at_one_point = (bbox.field("xmin").to_numpy() == -122.3) & (bbox.field("ymin").to_numpy() == 37.8)
    ids = np.array(table.column("id").to_pylist())
    assert ids[at_one_point].tolist() == ["q1", "q2", "", "q4"]  # equal keys in the order they came in
    assert sorted(table.column("id").to_pylist()) == sorted(
        [f"{c}{i}" for c in ("oak", "nyc", "ber", "syd") for i in range(1000)] + ["q1", "q2", "", "q4"]
    )


def test_one_sort_for_global_and_its_area_with_threads(
    sorted_file: tuple[Path, GeoParquetCollections, int], tmp_path: Path
) -> None:
    """The same run into ``global`` and an area (one sorter: each row buffered, spilled and merged once, split
    among the files as they are written), with the reader and writer threads: both files hold exactly the rows,
    order and row groups of the single-threaded file of one collection, byte for byte, though written in parts of
    two row groups and stitched; the area of the other licence class, declared and given nothing, is written
    empty."""
    path, _, added = sorted_file
    collections = GeoParquetCollections(
        tmp_path / "out",
        buffer_bytes=40_000,
        row_group_rows=500,
        merge_fan_in=3,
        block_bytes=4096,
        workers=2,
        part_row_groups=2,
    )
    for key in (("global", "", "addresses"), ("us_west", "", "addresses"), ("us_west", "sa", "addresses")):
        collections.add_collection(*key)
    run_zip = path.parent.parent / "run.zip"
    keys = [("global", "", "addresses"), ("us_west", "", "addresses")]
    entry = Entry("sources/xx/cities.json", "addresses", "primary", 42)
    assert collections.add_run_zip(run_zip, entry, keys) == (4004, 2)
    files = collections.close()
    expected = pq.read_table(path)
    for key in keys:
        assert files[key].rows == added
        assert files[key].row_groups == 9
        assert pq.read_table(files[key].path).equals(expected, check_metadata=True), key
        assert files[key].path.read_bytes() == path.read_bytes(), key
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.path.name for f in files.values())
    assert files["us_west", "sa", "addresses"].rows == 0
    assert pq.read_table(files["us_west", "sa", "addresses"].path).num_rows == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_files_over_the_pending_budget_write_shorter_row_groups(
    sorted_file: tuple[Path, GeoParquetCollections, int],
    tmp_path: Path,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two areas far apart (Oakland's rows in one, Berlin's in the other) and ``global``: with a budget of one
    byte for the rows the files hold between row groups, each round's rows go out at once, so the files hold
    more, shorter row groups, yet the same rows in the same order as with the default budget; the area whose
    rows end first is finished while the merge goes on. The same with and without threads."""
    path, _, _ = sorted_file
    run_zip = path.parent.parent / "run.zip"
    entry = Entry("sources/xx/cities.json", "addresses", "primary", 42)
    keys = [("global", "", "addresses"), ("us_west", "", "addresses"), ("europe", "", "addresses")]
    tables = {}
    closed: list[str] = []  # the files in the order their writers were closed
    close = PartedParquetWriter.close

    def recording_close(writer: PartedParquetWriter) -> None:
        if writer.is_open:
            closed.append(writer.path.name)
        close(writer)

    monkeypatch.setattr(PartedParquetWriter, "close", recording_close)
    for budget in (None, 1):
        collections = GeoParquetCollections(
            tmp_path / f"out-{budget}",
            buffer_bytes=40_000,
            row_group_rows=500,
            merge_fan_in=3,
            merge_window=64,
            block_bytes=4096,
            workers=workers,
            **({} if budget is None else {"pending_bytes": budget}),
        )
        for key in keys:
            collections.add_collection(*key)
        closed.clear()
        with zipfile.ZipFile(run_zip) as archive:
            text = archive.read("xx/cities.csv").decode()
        lines = text.splitlines(keepends=True)
        oak = [line for line in lines[1:] if ",oak" in line]
        ber = [line for line in lines[1:] if ",ber" in line]
        for name, rows, area in (("oak", oak, "us_west"), ("ber", ber, "europe")):
            zip_path = tmp_path / f"{name}-{budget}.zip"
            with zipfile.ZipFile(zip_path, "w") as archive:
                archive.writestr(f"xx/{name}.csv", lines[0] + "".join(rows))
            assert collections.add_run_zip(
                zip_path, entry, [("global", "", "addresses"), (area, "", "addresses")]
            )[0] == len(rows)
        files = collections.close()
        for key in keys:
            metadata = pq.ParquetFile(files[key].path).metadata
            assert all(metadata.row_group(i).num_rows <= 500 for i in range(metadata.num_row_groups))
            assert files[key].row_groups == metadata.num_row_groups
        tables[budget] = {key: pq.read_table(files[key].path) for key in keys}
        # Oakland (us_west) comes first on the curve, Berlin (europe) last: the us_west file is finished before
        # the global one, which takes rows to the end (files declared first are closed first when all end
        # together)
        assert closed.index(files[keys[1]].path.name) < closed.index(files[keys[0]].path.name), closed
        groups = {key: files[key].row_groups for key in keys}
        if budget is None:
            assert groups == {
                keys[0]: 4,
                keys[1]: 2,
                keys[2]: 2,
            }  # 2,000 rows and 1,000 each, in groups of 500
        else:
            assert all(groups[key] > (4 if key == keys[0] else 2) for key in keys), groups
    for key in keys:
        assert tables[1][key].equals(tables[None][key], check_metadata=True), key


def test_row_groups_are_tight(sorted_file: tuple[Path, GeoParquetCollections, int]) -> None:
    """Sorted by the curve, a reader looking for one city reads at most the 3 row groups its ~1,000 rows can
    straddle, of 9, by the bbox statistics alone (in the shuffled input order every group held every city)."""
    path, _, _ = sorted_file
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 9  # 4,004 rows in groups of 500
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    groups = []
    for group in range(metadata.num_row_groups):
        stats = {
            name: metadata.row_group(group).column(names.index(f"bbox.{name}")).statistics
            for name in ("xmin", "ymin", "xmax", "ymax")
        }
        groups.append((stats["xmin"].min, stats["ymin"].min, stats["xmax"].max, stats["ymax"].max))
    for lon, lat in ((-122.3, 37.8), (-74.0, 40.7), (13.4, 52.5), (151.2, -33.9)):
        box = (lon - 0.06, lat - 0.06, lon + 0.06, lat + 0.06)
        read = [g for g in groups if g[0] <= box[2] and g[2] >= box[0] and g[1] <= box[3] and g[3] >= box[1]]
        assert 2 <= len(read) <= 3, (lon, lat, read)


def test_hostile_records_read_as_the_zips_keep_them(
    sorted_file: tuple[Path, GeoParquetCollections, int],
) -> None:
    path, _, _ = sorted_file
    table = pq.read_table(
        path, filters=[("street", "in", ["Main St, Rear", 'The "Oaks"', "Short Row", "Long"])]
    )
    rows = {row["number"]: row for row in table.to_pylist()}
    assert rows["1"]["street"] == "Main St, Rear"
    assert rows["1"]["city"] == "Oak\r\nland"
    assert rows["2"]["street"] == 'The "Oaks"'
    assert rows["2"]["unit"] == "B"
    assert rows["3"]["hash"] == ""
    assert rows["3"]["id"] == ""
    assert rows["4"]["hash"] == "qh4"
    assert {row["run_id"] for row in rows.values()} == {42}
    assert {row["source_path"] for row in rows.values()} == {"sources/xx/cities.json"}
    assert shapely.from_wkb(rows["1"]["geometry"]).equals(shapely.Point(-122.3, 37.8))


# --------------------------------------------------------------------------------------------------------------
# Collect's files


SQUARE = '{{"type":"Polygon","coordinates":[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}}'


def square(x: float, y: float, size: float = 0.001) -> str:
    return SQUARE.format(x=x, y=y, x1=round(x + size, 6), y1=round(y + size, 6))


BUILDINGS = [
    square(-122.27, 37.80),
    None,  # dropped: no geometry
    square(-122.26, 37.81),
    '{"type":"MultiPolygon","coordinates":[[[[-122.2,37.7],[-122.19,37.7],[-122.19,37.71],[-122.2,37.7]]]]}',
    square(200.0, 37.8),  # dropped: beyond ±180
    '{"type":"Polygon","coordinates":[]}',  # dropped: empty
]
STREETS = [
    '{"type":"LineString","coordinates":[[13.40,52.50],[13.41,52.51]]}',
    '{"type":"LineString","coordinates":[[13.42,52.52],[13.43,52.53]]}',
]


@dataclass
class Collected:
    world: World
    result: Any
    folder: Path


@pytest.fixture(scope="module", params=BACKENDS)
def collected(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Collected]:
    folder = tmp_path_factory.mktemp(f"geoparquet-{request.param}")
    admin = None
    if request.param == "postgresql":
        admin = request.getfixturevalue("postgres_admin_url")
        url = create_database(admin)
        upgrade(url)
        url_text = url.render_as_string(hide_password=False)
    else:
        url_text = f"sqlite:///{folder / 'machine.db'}"
        upgrade(url_text)
    engine = make_engine(url_text, poolclass=sa.NullPool)
    storage = LocalStorage(folder / "storage", public_url="http://files.test/storage")
    w = World(engine, url_text, storage, folder)
    try:
        set_id = create_set(
            engine, owner="openaddresses", repository="openaddresses", commit_sha=COMMIT, now=w.tick()
        )
        w.run("alameda", "sources/us/ca/alameda.json", ALAMEDA, set_id=set_id)
        w.run("berlin", "sources/de/berlin.json", BERLIN, set_id=set_id)
        w.run("texas", "sources/us/tx.json", set_id=set_id, legacy_csv=TEXAS_LEGACY_CSV)
        w.run("nyc", "sources/us/ny/nyc.json", rows_near(-74.0, 40.7, 300, "Broadway"), set_id=set_id,
              share_alike="true")  # fmt: skip
        w.run("paris", "sources/fr/paris.json", rows_near(2.35, 48.85, 40, "Rue"), set_id=set_id)
        w.run(
            "buildings", "sources/us/ca/oakland.json", set_id=set_id, layer="buildings", name="city",
            features=(BUILDINGS, {"id": [f"b{i}" for i in range(6)], "height": ["10"] * 6, "levels": [""] * 6}),
        )  # fmt: skip
        w.run(
            "streets", "sources/de/berlin.json", set_id=set_id, layer="centerlines", name="strassen",
            features=(STREETS, {"name": ["Unter den Linden", "Friedrichstraße"], "oneway": ["no", "yes"]}),
        )  # fmt: skip
        complete_set(engine, set_id, now=w.tick())
        result = collect(engine, storage, "latest", now=NOW, work_dir=folder)
        yield Collected(w, result, folder)
    finally:
        engine.dispose()
        if admin is not None:
            drop_database(admin, url)


def parquet_path(collected: Collected, area: str, attr: str, layer: str) -> Path:
    return collected.world.storage.path(f"{COLLECTIONS_FOLDER}/{parquet_name(area, attr, layer)}")


def test_one_file_per_area_licence_and_layer(collected: Collected) -> None:
    keys = collected.world.storage.list_keys(COLLECTIONS_FOLDER)
    parquet = sorted(k.split("/", 1)[1] for k in keys if k.endswith(".parquet"))
    expected = sorted(
        parquet_name(area, attr, layer)
        for area in AREAS
        for attr in ("", "sa")
        for layer in ("addresses", "parcels", "buildings", "centerlines")
    )
    assert parquet == expected
    assert "openaddr-collected-us_west-sa-buildings.parquet" in parquet
    assert list(collected.folder.glob("openaddr-collect-*")) == []  # work folder and spill runs removed


def test_zips_rows_record_format_layer_and_rows(collected: Collected) -> None:
    rows = {row["url"].rsplit("/", 1)[1]: row for row in current_zips(collected.world.engine)}
    row = rows["openaddr-collected-us_west-addresses.parquet"]
    assert (row["format"], row["layer"], row["collection"], row["license_attr"]) == (
        "parquet", "addresses", "us_west", "",
    )  # fmt: skip
    assert row["content_length"] == parquet_path(collected, "us_west", "", "addresses").stat().st_size
    assert rows["openaddr-collected-us_west.zip"]["format"] == "zip"
    assert rows["openaddr-collected-us_west-addresses.geojsonl.zip"]["format"] == "geojsonl"
    for name, row in rows.items():
        if row["format"] == "parquet":
            path = collected.world.storage.path(f"{COLLECTIONS_FOLDER}/{name}")
            assert row["address_count"] == pq.ParquetFile(path).metadata.num_rows, name


def test_address_rows_match_the_zips(collected: Collected) -> None:
    """Every address file holds as many rows as the zip of its area and licence class: rows with invalid
    coordinates are dropped the same way (Berlin's 7)."""
    by_name = {c.name: c for c in collected.result.collections}
    for area in AREAS:
        for attr in ("", "sa"):
            suffix = f"-{attr}" if attr else ""
            zipped = by_name[f"openaddr-collected-{area}{suffix}.zip"].address_count
            parquet = by_name[parquet_name(area, attr, "addresses")]
            assert (
                parquet.address_count
                == zipped
                == pq.ParquetFile(parquet_path(collected, area, attr, "addresses")).metadata.num_rows
            ), (area, attr)
    assert by_name[parquet_name("global", "", "addresses")].address_count == 3 + 5 + 1 + 40
    assert by_name[parquet_name("global", "sa", "addresses")].address_count == 300
    ids = collected.world.ids
    assert collected.result.dropped == {ids["berlin"]: 7, ids["texas"]: 1}


def test_address_values_and_provenance(collected: Collected) -> None:
    table = pq.read_table(parquet_path(collected, "us_west", "", "addresses"))
    assert table.column_names == [
        "source_path", "source_layer", "layer_name", "run_id", *ADDRESS_ATTRIBUTES, "geometry", "bbox",
    ]  # fmt: skip
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [(r["number"], r["street"], r["unit"], r["postcode"]) for r in rows] == [
        ("1", "Main St", "", "94601"), ("2", "1st St, Rear", "", "94601"), ("3", 'The "Oaks"', "B", ""),
    ]  # fmt: skip
    assert {(r["source_path"], r["source_layer"], r["layer_name"], r["run_id"]) for r in rows} == {
        ("sources/us/ca/alameda.json", "addresses", "primary", collected.world.ids["alameda"])
    }
    points = shapely.from_wkb([r["geometry"] for r in rows])
    assert [(p.x, p.y) for p in points] == [(-122.25, 37.81), (-122.25, 37.85), (-122.15, 37.8)]
    texas = pq.read_table(parquet_path(collected, "us_south", "", "addresses")).to_pylist()
    assert [(r["number"], r["street"], r["hash"]) for r in texas] == [
        ("5", "Congress Ave", "")
    ]  # legacy columns
    berlin = pq.read_table(
        parquet_path(collected, "europe", "", "addresses"),
        filters=[("source_path", "=", "sources/de/berlin.json")],
    )
    assert sorted(berlin.column("number").to_pylist(), key=int) == [
        "1",
        "8",
        "9",
        "10",
        "11",
    ]  # as BERLIN_CSV


def test_other_layers_from_their_geojson(collected: Collected) -> None:
    table = pq.read_table(parquet_path(collected, "us_west", "", "buildings"))
    assert table.column_names == [
        "source_path",
        "source_layer",
        "layer_name",
        "run_id",
        "hash",
        "id",
        "height",
        "levels",
        "geometry",
        "bbox",
    ]
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == ["b0", "b2", "b3"]  # no geometry, beyond ±180 and empty: dropped
    assert {(r["source_layer"], r["layer_name"], r["height"]) for r in rows} == {("buildings", "city", "10")}
    geometries = shapely.from_wkb([r["geometry"] for r in rows])
    assert [g.geom_type for g in geometries] == ["Polygon", "Polygon", "MultiPolygon"]
    assert collected.result.features_dropped == {collected.world.ids["buildings"]: 3}
    streets = pq.read_table(parquet_path(collected, "europe", "", "centerlines")).to_pylist()
    assert sorted(r["name"] for r in streets) == ["Friedrichstraße", "Unter den Linden"]
    assert {r["oneway"] for r in streets} == {"no", "yes"}
    assert {r["addr_from_left"] for r in streets} == {""}  # a property the run did not write


def test_geo_metadata_follows_geoparquet_1_1(collected: Collected) -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    for layer, types in (
        ("addresses", ["Point"]),
        ("buildings", ["MultiPolygon", "Polygon"]),
        ("centerlines", ["LineString"]),
    ):
        for area, attr in (("global", ""), ("us_west", ""), ("europe", ""), ("asia", "sa")):
            path = parquet_path(collected, area, attr, layer)
            parquet = pq.ParquetFile(path)
            geo = json.loads(parquet.schema_arrow.metadata[b"geo"])
            validator.validate(geo)
            assert geo["version"] == "1.1.0"
            assert geo["primary_column"] == "geometry"
            column = geo["columns"]["geometry"]
            assert column["encoding"] == "WKB"
            assert "crs" not in column  # OGC:CRS84
            assert column["covering"] == {
                "bbox": {
                    "xmin": ["bbox", "xmin"],
                    "ymin": ["bbox", "ymin"],
                    "xmax": ["bbox", "xmax"],
                    "ymax": ["bbox", "ymax"],
                }
            }
            table = parquet.read()
            if table.num_rows == 0:
                assert column["geometry_types"] == []
                assert "bbox" not in column
                continue
            assert column["geometry_types"] == types, (layer, area)
            bbox = table.column("bbox").combine_chunks()
            assert column["bbox"] == [
                min(bbox.field("xmin").to_pylist()), min(bbox.field("ymin").to_pylist()),
                max(bbox.field("xmax").to_pylist()), max(bbox.field("ymax").to_pylist()),
            ]  # fmt: skip
            # the covering: each row's bbox is its geometry's bounds
            bounds = shapely.bounds(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))
            for i, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
                assert bbox.field(name).to_numpy().tolist() == bounds[:, i].tolist()


def test_files_are_in_curve_order(collected: Collected) -> None:
    for layer in ("addresses", "buildings"):
        bbox = pq.read_table(parquet_path(collected, "global", "", layer)).column("bbox").combine_chunks()
        keys = curve_keys(*(bbox.field(n).to_numpy() for n in ("xmin", "ymin", "xmax", "ymax")))
        assert len(keys) > 2
        assert (keys[1:] >= keys[:-1]).all()


def test_duckdb_reads_and_filters(collected: Collected) -> None:
    duckdb = pytest.importorskip("duckdb")
    path = parquet_path(collected, "global", "", "addresses")
    with duckdb.connect() as connection:
        count, sources = connection.execute(
            f"SELECT count(*), count(DISTINCT source_path) FROM read_parquet('{path}')"
        ).fetchone()
        assert (count, sources) == (49, 4)
        # the covering columns filter like a spatial index: Oakland's three rows
        rows = connection.execute(
            f"SELECT number, street FROM read_parquet('{path}') WHERE bbox.xmin BETWEEN -122.3 AND -122.1 "
            "AND bbox.ymin BETWEEN 37.7 AND 37.9 ORDER BY number"
        ).fetchall()
        assert rows == [("1", "Main St"), ("2", "1st St, Rear"), ("3", 'The "Oaks"')]
        wkb = connection.execute(f"SELECT geometry FROM read_parquet('{path}') WHERE id = 'a3'").fetchone()[0]
        assert shapely.from_wkb(bytes(wkb)).equals(shapely.Point(-122.15, 37.8))


def test_geopandas_reads_and_filters_by_bbox(collected: Collected) -> None:
    """GeoPandas checks the ``geo`` metadata as it reads, and its ``bbox`` filter goes through the covering."""
    geopandas = pytest.importorskip("geopandas")
    path = parquet_path(collected, "global", "", "addresses")
    frame = geopandas.read_parquet(path)
    assert len(frame) == 49
    assert frame.crs.to_string() == "OGC:CRS84"  # no crs key: the default
    assert frame.geometry.name == "geometry"
    oakland = geopandas.read_parquet(path, bbox=(-122.3, 37.7, -122.1, 37.9))
    assert sorted(oakland["id"]) == ["a1", "a2", "a3"]
    assert set(oakland.geometry.geom_type) == {"Point"}
    buildings = geopandas.read_parquet(parquet_path(collected, "us_west", "", "buildings"))
    assert sorted(buildings.geometry.geom_type) == ["MultiPolygon", "Polygon", "Polygon"]


def test_gdal_reads_the_files(collected: Collected) -> None:
    pyogrio = pytest.importorskip("pyogrio")
    if "Parquet" not in pyogrio.list_drivers():
        pytest.skip(f"this GDAL ({pyogrio.__gdal_version_string__}) has no Parquet driver")
    path = parquet_path(collected, "us_west", "", "buildings")
    meta, table = pyogrio.read_arrow(path)
    assert meta["crs"] in ("OGC:CRS84", "EPSG:4326")
    assert table.num_rows == 3


def test_a_corrupt_geojson_names_its_run(tmp_path: Path) -> None:
    import gzip

    from openaddr.collect.geoparquet import GeoParquetError

    path = tmp_path / "out.geojson.gz"
    good = '{"type":"Feature","geometry":' + square(1.0, 1.0) + ',"properties":{"hash":"h","pid":"1"}}\n'
    path.write_bytes(gzip.compress((good + "not json at all\n").encode()))
    collections = GeoParquetCollections(tmp_path / "out")
    collections.add_collection("global", "", "parcels")
    entry = Entry("sources/xx/lots.json", "parcels", "county", 7)
    with pytest.raises(GeoParquetError, match=r"run 7 \(sources/xx/lots\.json, layer parcels 'county'\)"):
        collections.add_geojson(path, "xx/lots/county.geojsonl", entry, [("global", "", "parcels")])
    collections.discard()
    assert not (tmp_path / "out").exists()


def test_bytes_that_are_not_utf8_become_replacement_characters(tmp_path: Path) -> None:
    """Parquet text must be UTF-8: a byte the zips pass through becomes U+FFFD, the row is kept; a quoted header
    and other columns are taken by name."""
    path = tmp_path / "run.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "xx/bytes.csv",
            b'"STREET","LAT","LON"\r\nCaf\xe9 Rd,1.5,2.5\r\n"Plain, St",1.25,2.25\r\nBad,x\xff,2\r\n',
        )
    collections = GeoParquetCollections(tmp_path / "out")
    collections.add_collection("global", "", "addresses")
    added, dropped = collections.add_run_zip(
        path, Entry("sources/xx/bytes.json", "addresses", "primary", 1), [("global", "", "addresses")]
    )
    assert (added, dropped) == (2, 1)
    table = pq.read_table(collections.close()["global", "", "addresses"].path)
    rows = sorted(table.to_pylist(), key=lambda r: r["street"])
    assert [(r["street"], r["number"], shapely.from_wkb(r["geometry"]).coords[0]) for r in rows] == [
        ("Caf\ufffd Rd", "", (2.5, 1.5)),
        ("Plain, St", "", (2.25, 1.25)),
    ]


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=60).map(sorted), min_size=1, max_size=12),
    window=st.integers(1, 9),
    most=st.none() | st.integers(1, 40),
    batch=st.integers(1, 7),
    stride=st.integers(1, 3),
    chunk=st.integers(1, 4),
)
def test_merge_of_runs_by_key_windows_is_a_stable_sort(
    runs: list[list[int]], window: int, most: int | None, batch: int, stride: int, chunk: int
) -> None:
    """The merge (key windows read lazily, rows taken batch by batch) gives every row once, in key order, equal
    keys in the order of their runs, then of their place in the run: a stable sort of the runs laid end to end.
    Small key ranges make many ties and runs overlapping or not at all; windows of 1 to 9 keys and batches of
    ``batch`` rows cut the runs anywhere, and rounds of at most ``most`` rows lower the threshold, from a sample
    of every ``stride``-th key or exactly (runs left out of a round drop their keys and batch and read them
    again); keys are loaded ``chunk`` at a time."""
    import pyarrow as pa

    from openaddr.collect.geoparquet import _merge, _Run

    tables = [
        pa.table(
            {
                "_key": pa.array(keys, pa.uint64()),
                "tag": pa.array([f"{index}:{position}" for position in range(len(keys))]),
            }
        )
        for index, keys in enumerate(runs)
    ]
    merged = []
    from unittest import mock

    from openaddr.collect import geoparquet

    with mock.patch.object(geoparquet, "SPILL_BATCH_ROWS", batch):
        merge = _merge([_Run.in_memory(table, window) for table in tables], most)
    with (
        mock.patch.object(geoparquet, "CAP_SAMPLE_STRIDE", stride),
        mock.patch.object(geoparquet, "MERGE_KEY_CHUNK", chunk),
    ):
        rounds = list(merge)
    for table, order in rounds:
        assert most is None or table.num_rows <= most
        merged.extend((table if order is None else table.take(order)).column("tag").to_pylist())
    everything = [
        (key, f"{index}:{position}") for index, keys in enumerate(runs) for position, key in enumerate(keys)
    ]
    assert merged == [tag for _, tag in sorted(everything, key=lambda item: item[0])]


def test_merge_rounds_stay_small_when_many_rows_share_one_key() -> None:
    """Thousands of points at one place (a source geocoded to a town's centre) in three runs: no merge round takes
    more than ``most`` rows, and the rows come out run by run, in their order."""
    import pyarrow as pa

    from openaddr.collect.geoparquet import _merge, _Run

    runs = [[5] * 3000 + [9] * 10, [1] + [5] * 2000, [5] * 1500 + [7]]
    tables = [
        pa.table({"_key": pa.array(keys, pa.uint64()), "tag": [f"{i}:{p}" for p in range(len(keys))]})
        for i, keys in enumerate(runs)
    ]
    sizes, merged = [], []
    for table, order in _merge([_Run.in_memory(table, 64) for table in tables], 100):
        sizes.append(table.num_rows)
        merged.extend((table if order is None else table.take(order)).column("tag").to_pylist())
    assert max(sizes) <= 100
    everything = [(key, f"{i}:{p}") for i, keys in enumerate(runs) for p, key in enumerate(keys)]
    assert merged == [tag for _, tag in sorted(everything, key=lambda item: item[0])]
