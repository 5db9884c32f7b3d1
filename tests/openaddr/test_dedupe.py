"""The cross-source dedupe (openaddr.collect.dedupe): normalisation, decisions on hand-made pairs, the sharded
result against a brute-force O(n²) reference (Hypothesis), and the ``-processed`` collections end to end through
collect() on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from openaddr.cli import main
from openaddr.collect import COLLECTIONS_FOLDER, collect
from openaddr.collect.dedupe import (
    EARTH_RADIUS_M,
    REPORT_NAME,
    Deduper,
    DedupeSettings,
    Grid,
    Member,
    address_key,
    hash_digest,
    haversine_m,
    normalise_number,
    normalise_street,
    normalise_unit,
    processed_name,
    source_area_m2,
)
from openaddr.db import make_engine, upgrade
from openaddr.db.collect import current_zips
from openaddr.db.jobs import complete_set, create_set
from tests.db_fixtures import BACKENDS, create_database, drop_database
from tests.openaddr.test_collect import COMMIT, NOW, World

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: (member, lon, lat, number, street, unit, postcode, hash)
Row = tuple[int, float, float, str, str, str, str, str]

# --------------------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("12", "Main St", ""), ("12", "MAIN STREET", "")),
        (("12", "Main   St.", ""), ("12", " main street ", "")),
        (("12", "N Oak Ave", ""), ("12", "North Oak Avenue", "")),
        (("12", "Oak Rd", ""), ("12", "oak road", "")),
        (("12", "Sunset Blvd", ""), ("12", "Sunset Boulevard", "")),
        (("12", "St. John's St", ""), ("12", "st johns street", "")),
        (("12", "Rue de l'Église", ""), ("12", "RUE DE L'EGLISE", "")),
        (("12", "Straße", ""), ("12", "STRASSE", "")),
        (("12A", "Main St", ""), ("12 a", "Main St", "")),
        (("12", "Main St", "Apt 4"), ("12", "Main St", "#4")),
        (("12", "Main St", "Unit 4B"), ("12", "Main St", "4 b")),
        (("12", "Main-St", ""), ("12", "Main St", "")),
    ],
)
def test_normalisation_makes_the_same_key(left: tuple[str, str, str], right: tuple[str, str, str]) -> None:
    assert address_key(*left) is not None
    assert address_key(*left) == address_key(*right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("12", "Main St", ""), ("13", "Main St", "")),
        (("12", "Main St", "1"), ("12", "Main St", "2")),
        (("12", "Main St", ""), ("12", "Main St", "2")),  # a unit is not the building
        (("12-14", "Main St", ""), ("1214", "Main St", "")),  # punctuation separates, it does not join
        (("12", "Main St", ""), ("12", "Main Ave", "")),
        (
            ("12", "St John Rd", ""),
            ("12", "Saint John Rd", ""),
        ),  # no word for Saint: only abbreviations unify
    ],
)
def test_normalisation_keeps_different_addresses_apart(
    left: tuple[str, str, str], right: tuple[str, str, str]
) -> None:
    assert address_key(*left) != address_key(*right)


def test_normalised_forms() -> None:
    assert normalise_street("  W. 3rd  St, Rear ") == "west 3rd street rear"
    assert normalise_number("12 1/2") == "12 1 2"
    assert normalise_unit("Apt. #4") == "4"
    assert address_key("", "Main St", "") is None  # no number: never matched
    assert address_key("12", " ,. ", "") is None  # a street of punctuation only


# --------------------------------------------------------------------------------------------------------------
# Decisions on hand-made rows


def north(lon: float, lat: float, metres: float) -> tuple[float, float]:
    return lon, lat + math.degrees(metres / EARTH_RADIUS_M)


def east(lon: float, lat: float, metres: float) -> tuple[float, float]:
    dlon = math.degrees(metres / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return ((lon + dlon + 180.0) % 360.0) - 180.0, lat


def run(
    rows: Sequence[Row],
    members: Sequence[Member],
    *,
    partitions: int = 4,
    shard_rows: int = 1000,
    cell_degrees: float = 0.01,
) -> tuple[list[int], list[int]]:
    """The member that beat each row (-1: kept), in global and in its region, by the sharded dedupe."""
    with tempfile.TemporaryDirectory() as tmp:
        deduper = Deduper(
            Path(tmp), members, partitions=partitions, shard_rows=shard_rows, cell_degrees=cell_degrees
        )
        for row in rows:
            deduper.add(*row)
        deduper.finish()
        kept_global, kept_regional = deduper.decisions(0, len(rows))
        deduper.close()
        return kept_global.tolist(), kept_regional.tolist()


A, B = Member("a", "sources/a.json", 0), Member("b", "sources/b.json", 0)
HOME = (-122.2705, 37.8045)


def pair(
    offset: tuple[float, float], *, postcodes: tuple[str, str] = ("", ""), units: tuple[str, str] = ("", "")
) -> list[Row]:
    return [
        (0, *HOME, "1", "Main St", units[0], postcodes[0], "ha"),
        (1, *offset, "1", "Main Street", units[1], postcodes[1], "hb"),
    ]


def test_postcode_wins_over_a_smaller_area() -> None:
    rows = pair(north(*HOME, 3), postcodes=("94601", ""))
    rows.append((0, HOME[0] - 0.5, HOME[1] + 0.5, "9", "Far Rd", "", "", "x"))  # a covers more
    assert run(rows, [A, B])[0] == [-1, 0, -1]  # but only a's row has a postcode
    rows = pair(north(*HOME, 3), postcodes=("", "94601"))
    rows.append((1, HOME[0] - 0.5, HOME[1] + 0.5, "9", "Far Rd", "", "", "x"))
    assert run(rows, [A, B])[0] == [1, -1, -1]  # b covers more, but only b's row has a postcode


def test_smaller_area_wins() -> None:
    rows = pair(north(*HOME, 3), postcodes=("1", "1"))
    rows.append((0, HOME[0] + 0.2, HOME[1], "5", "Other St", "", "", "y"))  # a covers more
    assert run(rows, [A, B])[0] == [1, -1, -1]
    rows[2] = (1, HOME[0] + 0.2, HOME[1], "5", "Other St", "", "", "y")  # now b covers more
    assert run(rows, [A, B])[0] == [-1, 0, -1]


def test_tie_break_by_source_path_then_hash() -> None:
    rows = pair(north(*HOME, 3))
    # a single row each: the same area (to three figures); "sources/a.json" < "sources/b.json"
    assert run(rows, [A, B])[0] == [-1, 0]
    assert run(rows, [Member("a", "sources/z.json"), B])[0] == [1, -1]
    # two layers of one source file: same path and area, the row hash decides
    same = [Member("x", "sources/x.json"), Member("x-other", "sources/x.json")]
    expected_winner = 0 if hash_digest("ha") < hash_digest("hb") else 1
    result = run(rows, same)[0]
    assert result[expected_winner] == -1
    assert result[1 - expected_winner] == expected_winner


@pytest.mark.parametrize(("metres", "matched"), [(9.0, True), (9.99, True), (10.01, False), (11.0, False)])
def test_distance_threshold(metres: float, matched: bool) -> None:
    for offset in (north(*HOME, metres), east(*HOME, metres)):
        assert run(pair(offset), [A, B])[0] == ([-1, 0] if matched else [-1, -1])


def test_same_source_is_never_deduped_against_itself() -> None:
    rows: list[Row] = [
        (0, *HOME, "1", "Main St", "", "", "h1"),
        (0, *north(*HOME, 1), "1", "Main St", "", "", "h2"),
    ]
    assert run(rows, [A, B])[0] == [-1, -1]


def test_different_units_are_both_kept() -> None:
    assert run(pair(north(*HOME, 2), units=("1", "2")), [A, B])[0] == [-1, -1]
    assert run(pair(north(*HOME, 2), units=("Apt 2", "#2")), [A, B])[0] == [-1, 0]


@pytest.mark.parametrize(
    "where",
    [
        "edge",  # two cells side by side at 0.01°
        "corner",  # four cells meeting
        "antimeridian",  # columns at 179.99° and -180°
        "pole",  # two sides of the North Pole
        "cap-edge",  # across the polar cap's first row
        "south-pole",
    ],
)
def test_pairs_across_cell_boundaries(where: str) -> None:
    points = {
        "edge": ((-122.27 - 3e-5, 37.8045), (-122.27 + 3e-5, 37.8045)),
        "corner": ((-122.27 - 2e-5, 37.80 - 2e-5), (-122.27 + 2e-5, 37.80 + 2e-5)),
        "antimeridian": ((179.99997, -17.0), (-179.99997, -17.0)),
        "pole": ((0.0, 89.99996), (180.0 - 1e-9, 89.99996)),
        "cap-edge": ((10.0, 89.9 - 2e-5), (10.0, 89.9 + 2e-5)),
        "south-pole": ((-45.0, -89.99996), (135.0, -89.99996)),
    }[where]
    (lon1, lat1), (lon2, lat2) = points
    assert float(haversine_m(lon1, lat1, lon2, lat2)) < 10
    grid = Grid()
    if where not in ("pole", "south-pole"):
        assert grid.home(lon1, lat1) != grid.home(lon2, lat2)  # really in two cells
    rows: list[Row] = [
        (0, lon1, lat1, "1", "Main St", "", "", "h"),
        (1, lon2, lat2, "1", "Main St", "", "", "h"),
    ]
    for partitions in (1, 7):
        assert run(rows, [A, B], partitions=partitions)[0] == [-1, 0], partitions


def test_a_row_beaten_only_from_outside_its_region_stays_in_the_region() -> None:
    # a is in region 0, b in no region (a source in global only): b's smaller area wins in global only
    members = [Member("a", "sources/a.json", 0), Member("b", "sources/b.json", -1)]
    rows = pair(north(*HOME, 3))
    rows.append((0, HOME[0] + 0.3, HOME[1], "5", "Other St", "", "", "y"))
    kept_global, kept_regional = run(rows, members)
    assert kept_global == [1, -1, -1]
    assert kept_regional == [-1, -1, -1]
    members[1] = Member("b", "sources/b.json", 0)
    assert run(rows, members) == ([1, -1, -1], [1, -1, -1])


def test_a_huge_cell_is_split_by_key_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from openaddr.collect import dedupe

    monkeypatch.setattr(dedupe, "_DROP_CHUNK", 3)  # decisions read back 3 at a time
    # 300 rows in one cell, three sources, 100 keys: the shards are split by cell, then by cell and key
    rows: list[Row] = []
    for n in range(100):
        for member in range(3):
            lon, lat = north(*HOME, member * 2.0)
            rows.append((member, lon, lat, str(n), "Main St", "", "1" if member == 2 else "", f"h{n}"))
    members = [Member(f"m{i}", f"sources/m{i}.json", 0) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        deduper = Deduper(Path(tmp), members, partitions=3, shard_rows=20)
        for row in rows:
            deduper.add(*row)
        stats = deduper.finish()
        kept_global, kept_regional = deduper.decisions(0, len(rows))
        # read back in consecutive slices, then out of order: the same decisions
        slices = [deduper.decisions(a, min(a + 7, len(rows))) for a in range(0, len(rows), 7)]
        assert np.concatenate([g for g, _ in slices]).tolist() == kept_global.tolist()
        assert np.concatenate([r for _, r in slices]).tolist() == kept_regional.tolist()
        assert deduper.decisions(30, 40)[0].tolist() == kept_global[30:40].tolist()
        deduper.close()
    assert stats.splits > 1
    assert stats.depth >= 2
    assert stats.largest_shard <= 20 or stats.largest_shard <= 3  # a (cell, key) group holds 3 rows
    # member 2 has the postcodes: it beats both others on every key
    assert kept_global.tolist() == [2, 2, -1] * 100


def test_grid_refuses_a_cell_size_that_does_not_divide_the_circle() -> None:
    with pytest.raises(ValueError, match="must divide 360"):
        Grid(0.007)


# --------------------------------------------------------------------------------------------------------------
# The sharded result equals the brute-force one


def brute_force(
    rows: Sequence[Row], members: Sequence[Member], distance: float = 10.0
) -> tuple[list[int], list[int]]:
    """The rule of the module docstring, pair by pair (O(n²)), with no grid."""
    boxes: dict[int, list[float]] = {}
    for m, lon, lat, *_ in rows:
        if lon == 0.0 and lat == 0.0:
            continue
        box = boxes.setdefault(m, [math.inf, -math.inf, math.inf, -math.inf, math.inf, -math.inf])
        shifted = float(np.mod(lon, 360.0))
        box[:] = [
            min(box[0], lat), max(box[1], lat), min(box[2], lon), max(box[3], lon),
            min(box[4], shifted), max(box[5], shifted),
        ]  # fmt: skip
    area = {
        m: source_area_m2(b[0], b[1], min(b[3] - b[2], b[5] - b[4])) if m in boxes else math.inf
        for m in range(len(members))
        for b in [boxes.get(m, [0.0] * 6)]
    }
    keys = [address_key(r[3], r[4], r[5]) for r in rows]

    def priority(i: int) -> tuple[Any, ...]:
        m = rows[i][0]
        return (not rows[i][6].strip(), area[m], members[m].path, hash_digest(rows[i][7]), m, i)

    kept_global, kept_regional = [], []
    for i, r in enumerate(rows):
        better = [
            j
            for j, s in enumerate(rows)
            if s[0] != r[0]
            and keys[i] is not None
            and keys[i] == keys[j]
            and float(haversine_m(r[1], r[2], s[1], s[2])) <= distance
            and priority(j) < priority(i)
        ]
        best = min(better, key=priority, default=None)
        kept_global.append(-1 if best is None else rows[best][0])
        regional = [j for j in better if members[rows[j][0]].region == members[r[0]].region >= 0]
        best = min(regional, key=priority, default=None)
        kept_regional.append(-1 if best is None else rows[best][0])
    return kept_global, kept_regional


#: Anchors on cell edges and corners, at the antimeridian and near the poles.
ANCHORS = [(-122.27, 37.80), (0.0, 0.0), (180.0, -17.0), (-180.0, 52.0), (10.0, 89.9), (0.0, 89.99995),
           (33.0, -89.9999), (0.01, -0.01)]  # fmt: skip


@st.composite
def row_sets(draw: st.DrawFn) -> tuple[list[Row], list[Member]]:
    members = [
        Member(f"m{i}", f"sources/{draw(st.sampled_from('abc'))}.json", draw(st.sampled_from([-1, 0, 1])))
        for i in range(draw(st.integers(2, 4)))
    ]
    rows: list[Row] = []
    for _ in range(draw(st.integers(0, 40))):
        lon0, lat0 = draw(st.sampled_from(ANCHORS))
        lon, lat = east(*north(lon0, lat0, 0.0), draw(st.floats(-14, 14)))
        lat = min(90.0, max(-90.0, lat + math.degrees(draw(st.floats(-14, 14)) / EARTH_RADIUS_M)))
        rows.append(
            (
                draw(st.integers(0, len(members) - 1)),
                lon,
                lat,
                draw(st.sampled_from(["1", "1 ", "2"])),
                draw(st.sampled_from(["Main St", "MAIN STREET", "Oak Ave"])),
                draw(st.sampled_from(["", "", "Apt 2", "#2", "3"])),
                draw(st.sampled_from(["", "", "94601"])),
                draw(st.sampled_from(["h1", "h2", "h3"])),
            )
        )
    return rows, members


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=row_sets(), partitions=st.sampled_from([1, 2, 5]), shard_rows=st.sampled_from([2, 7, 1000]))
def test_sharded_result_equals_brute_force(
    data: tuple[list[Row], list[Member]], partitions: int, shard_rows: int
) -> None:
    rows, members = data
    assert run(rows, members, partitions=partitions, shard_rows=shard_rows) == brute_force(rows, members)


# --------------------------------------------------------------------------------------------------------------
# End to end through collect()

POSTCODED = [
    ("-122.2500", "37.8100", "1", "Main St", "", "", "", "", "94601", "a1", "ha1"),
    ("-122.2500", "37.8200", "2", "Main St", "", "", "", "", "94601", "a2", "ha2"),
    ("-122.2500", "37.8300", "3", "Main St", "Apt 1", "", "", "", "94601", "a3", "ha3"),
]


def nudged(rows: Sequence[Sequence[str]], metres: float, **change: str) -> list[tuple[str, ...]]:
    out = []
    for r in rows:
        lon, lat = north(float(r[0]), float(r[1]), metres)
        row = [f"{lon:.7f}", f"{lat:.7f}", *r[2:]]
        for column, value in change.items():
            row[
                ["number", "street", "unit", "postcode", "hash"].index(column) + 2
                if column != "postcode" and column != "hash"
                else {"postcode": 8, "hash": 10}[column]
            ] = value
        out.append(tuple(row))
    return out


@dataclass
class DedupeWorld:
    world: World
    result: Any
    files: dict[str, zipfile.ZipFile]


@pytest.fixture(scope="module", params=BACKENDS)
def deduped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DedupeWorld]:
    from openaddr.storage import LocalStorage

    folder = tmp_path_factory.mktemp(f"dedupe-{request.param}")
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
        # A county with postcodes; the statewide source repeats its rows 4 m away without postcodes, plus a far row.
        w.run("alameda", "sources/us/ca/alameda.json", POSTCODED, set_id=set_id)
        statewide = [
            *nudged(POSTCODED, 4.0, postcode="", hash="hs"),
            ("-120.0", "36.0", "9", "Far Rd", "", "", "", "", "", "s9", "hs9"),
            ("nan", "36.0", "10", "Bad Rd", "", "", "", "", "", "s10", "hs10"),  # dropped by collect first
        ]
        w.run("statewide", "sources/us-ca-statewide.json", statewide, set_id=set_id)
        # A global-only source (no area) with postcodes and one point: smaller than alameda, so it wins in global;
        # us_west does not hold it, so there alameda's row stays.
        w.run("usa", "sources/usa/one.json", nudged(POSTCODED[:1], -3.0, hash="hu"), set_id=set_id)
        # 12 m south of alameda (16 m from statewide): no match; another unit: no match.
        w.run("far", "sources/us/ca/far.json", [*nudged(POSTCODED[1:2], -12.0), *nudged(POSTCODED[2:3], 1.0, unit="Apt 2")], set_id=set_id)  # fmt: skip
        # Share-alike sources are deduped among themselves only: nyc-sa beats nothing in the open collections.
        w.run(
            "sa",
            "sources/us/ca/sa.json",
            nudged(POSTCODED, 1.0, hash="hsa"),
            set_id=set_id,
            share_alike="true",
        )
        w.run("sa2", "sources/us/ca/sa2.json", nudged(POSTCODED[:2], 2.0, postcode="", hash="hsb"), set_id=set_id, share_alike="true")  # fmt: skip
        complete_set(engine, set_id, now=w.tick())
        result = collect(engine, storage, "latest", now=NOW, work_dir=folder, dedupe=True)
        files = {
            key.split("/", 1)[1]: zipfile.ZipFile(storage.path(key))
            for key in storage.list_keys(COLLECTIONS_FOLDER)
            if key.endswith("-processed.zip")
            or key.endswith("collected-global.zip")
            or key.endswith("collected-us_west.zip")
        }
        yield DedupeWorld(w, result, files)
        for handle in files.values():
            handle.close()
    finally:
        engine.dispose()
        if admin is not None:
            drop_database(admin, url)


def read_csv(archive: zipfile.ZipFile, name: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(archive.read(name).decode(), newline="")))


def test_processed_collections_are_published_and_recorded(deduped: DedupeWorld) -> None:
    from openaddr.collect.areas import AREAS

    names = [processed_name(area, attr) for area in AREAS for attr in ("", "sa")]
    assert [c.name for c in deduped.result.collections][-18:] == names
    keys = deduped.world.storage.list_keys(COLLECTIONS_FOLDER)
    assert all(f"{COLLECTIONS_FOLDER}/{n}" in keys for n in names)
    current = {row["url"]: row for row in current_zips(deduped.world.engine)}
    # the 18 address zips, 72 GeoJSON collections and 18 -processed zips; GeoParquet files apart
    assert sum(row["format"] != "parquet" for row in current.values()) == 108
    for c in deduped.result.collections[-18:]:
        row = current[c.url]
        assert row["layer"] is None
        assert row["collection"] == c.area
        assert row["license_attr"] == c.license_attr
        path = deduped.world.storage.path(f"{COLLECTIONS_FOLDER}/{c.name}")
        assert row["content_length"] == path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            lines = sum(
                len(read_csv(archive, n)) - 1
                for n in archive.namelist()
                if n.endswith(".csv") and not n.startswith("summary/") and n != REPORT_NAME
            )
        assert row["address_count"] == c.address_count == lines
    for processed in deduped.result.processed:  # rows skipped while writing = the report counted beforehand
        assert processed.dropped == sum(processed.report.values()), processed.name


def test_global_processed_drops_and_report(deduped: DedupeWorld) -> None:
    archive = deduped.files["openaddr-collected-global-processed.zip"]
    original = deduped.files["openaddr-collected-global.zip"]
    members = [n for n in original.namelist() if n not in ("README.txt", "LICENSE.txt")]
    assert archive.namelist() == ["README.txt", *members, REPORT_NAME, "LICENSE.txt"]
    assert archive.read("LICENSE.txt") == original.read("LICENSE.txt")
    alameda = read_csv(archive, "us/ca/alameda.csv")
    # row 1 lost to usa/one (a point: smaller area, postcode too); rows 2 and 3 stay
    assert [r[9] for r in alameda[1:]] == ["a2", "a3"]
    assert [r[3] for r in read_csv(archive, "us-ca-statewide.csv")[1:]] == ["Far Rd"]
    assert len(read_csv(archive, "us/ca/far.csv")) == 3  # 12 m, and another unit: both kept
    assert read_csv(archive, "usa/one.csv") == read_csv(original, "usa/one.csv")
    # untouched members are byte for byte the collection's
    assert archive.read("us/ca/far.csv") == original.read("us/ca/far.csv")
    assert archive.read("us/ca/far.vrt") == original.read("us/ca/far.vrt")
    # the summary follows the kept rows
    assert archive.read("summary/us/ca/alameda-summary.csv").splitlines()[1].startswith(b"2,-122.3,37.8,")
    assert read_csv(archive, REPORT_NAME) == [  # noqa: PLR6201
        ["kept_source", "dropped_source", "count"],
        ["us/ca/alameda", "us-ca-statewide", "2"],
        ["usa/one", "us-ca-statewide", "1"],
        ["usa/one", "us/ca/alameda", "1"],
    ]
    readme = archive.read("README.txt").decode()
    assert readme.startswith(original.read("README.txt").decode())
    assert "within 10 m" in readme
    assert "4 rows were removed; dedupe-report.csv" in readme


def test_regional_processed_keeps_rows_beaten_from_outside(deduped: DedupeWorld) -> None:
    west = deduped.files["openaddr-collected-us_west-processed.zip"]
    assert [r[9] for r in read_csv(west, "us/ca/alameda.csv")[1:]] == ["a1", "a2", "a3"]
    assert [r[3] for r in read_csv(west, "us-ca-statewide.csv")[1:]] == ["Far Rd"]
    assert read_csv(west, REPORT_NAME)[1:] == [["us/ca/alameda", "us-ca-statewide", "3"]]
    assert west.read("LICENSE.txt") == deduped.files["openaddr-collected-us_west.zip"].read("LICENSE.txt")


def test_share_alike_is_deduped_on_its_own(deduped: DedupeWorld) -> None:
    sa_west = deduped.files["openaddr-collected-us_west-sa-processed.zip"]
    assert len(read_csv(sa_west, "us/ca/sa.csv")) == 4
    assert len(read_csv(sa_west, "us/ca/sa2.csv")) == 1  # header only: sa's postcodes win
    assert read_csv(sa_west, REPORT_NAME)[1:] == [["us/ca/sa", "us/ca/sa2", "2"]]
    figures = deduped.result.dedupe
    assert figures[""].rows == 3 + 4 + 1 + 2
    assert figures["sa"].rows == 5
    assert figures[""].dropped_global == 4
    assert figures["sa"].dropped_global == 2
    empty = deduped.files["openaddr-collected-europe-processed.zip"]
    assert empty.namelist() == ["README.txt", REPORT_NAME, "LICENSE.txt"]
    assert "0 rows were removed" in empty.read("README.txt").decode()


def test_collect_command_with_dedupe(
    deduped: DedupeWorld, capsys: pytest.CaptureFixture[str], no_machine_env: None
) -> None:
    world = deduped.world
    status = main(
        ["collect", "latest", "--database", world.url, "--storage", str(world.storage.root),
         "--public-url", "http://files.test/storage", "--work-dir", str(world.folder / "work"), "--dedupe"]
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert (
        len([line for line in out if line.startswith("openaddr-collected-")]) == 180
    )  # 108 and 72 GeoParquet
    assert any(line.startswith("openaddr-collected-global-processed.zip\t") for line in out)
    assert "Dedupe open: 10 rows, 4 dropped from global, 3 from their region; " in "\n".join(out)
    assert sorted(p.name for p in (world.folder / "work").iterdir()) == []


def test_dedupe_settings_reach_the_dedupe(deduped: DedupeWorld) -> None:
    world = deduped.world
    wide = collect(world.engine, world.storage, "latest", now=NOW, work_dir=world.folder,
                   dedupe=DedupeSettings(distance_m=15.0, partitions=2, shard_rows=2))  # fmt: skip
    assert wide.dedupe[""].dropped_global == 5  # far.csv's row at 12 m now matches alameda's
    assert wide.dedupe[""].splits >= 1


def test_quoted_and_short_rows_pass_through(tmp_path: Path) -> None:
    from openaddr.collect.archive import CollectionZip, LicenseBlock
    from openaddr.collect.dedupe import build_processed

    header = b"LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH\r\n"
    first = (
        header
        + b'-122.25,37.81,1,"Main St, Rear",,"Two\nLines",,,94601,a1,0000000000000001\r\n'
        + b"-122.25,37.82,2\r\n"  # short of columns: kept, never matched
        + b"-122.25,37.83,3,Oak Ave,,,,,,a3,0000000000000003\r\n"
    )
    second = (
        header
        + b'-122.25,37.81002,1,"MAIN STREET, REAR",,,,,,b1,0000000000000002\r\n'  # 2 m from a1: dropped
        + b"-122.25,37.82,2,,,,,,,b2,0000000000000004\r\n"  # no street: kept
    )
    source = tmp_path / "global.zip"
    collection = CollectionZip(source, "readme\n", (2026, 12, 7, 0, 0, 0))
    for name, data in (("x/first.csv", first), ("y/second.csv", second)):
        with collection.member(name) as handle:
            handle.write(data)
    collection.close()
    blocks = [
        LicenseBlock("x/first", None, None, None, None),
        LicenseBlock("y/second", None, None, None, None),
    ]
    out = tmp_path / "out"
    out.mkdir()
    processed, stats = build_processed(
        out, {("global", ""): (source, blocks)}, "readme\n", (2026, 12, 7, 0, 0, 0), {}
    )
    assert [p.name for p in processed] == ["openaddr-collected-global-processed.zip"]
    assert stats[""].rows == 5
    assert stats[""].keyed == 3
    with zipfile.ZipFile(processed[0].path) as archive:
        assert archive.read("x/first.csv") == first  # quoted fields written back as they were
        assert archive.read("y/second.csv") == header + b"-122.25,37.82,2,,,,,,,b2,0000000000000004\r\n"
        assert read_csv(archive, REPORT_NAME)[1:] == [["x/first", "y/second", "1"]]
    assert sorted(p.name for p in out.iterdir()) == [
        "openaddr-collected-global-processed.zip"
    ]  # no spill left
