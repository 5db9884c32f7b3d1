"""Collect (machine-ci.md §8) on generated runs, on SQLite and PostgreSQL.

A module-scoped *world* per backend: a fresh migrated database and a local storage holding about thirty runs, each
published with the real writers (``openaddr.outputs.write_package``, ``write_state``, ``Storage.publish_run``) and
recorded with ``insert_run``/``finish_run``, across two completed sets and one incomplete newer set, with the cases
the input rule must tell apart (unmerged, held by the quality gate, released, copies, pending, failures with and
without a processed zip, another layer type, a zip outside the storage, a missing zip). Collect runs once per world;
the tests read its zips byte for byte.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from openaddr.canonical import OUTPUT_COLUMNS
from openaddr.cli import main
from openaddr.collect import (
    COLLECTIONS_FOLDER,
    Collection,
    archive as collect_archive,
    collect,
    collection_name,
    dedupe_published,
    parts as parts_module,
    record_collections,
    repository_of,
)
from openaddr.collect.archive import CollectionZip, add_run_zip, square
from openaddr.collect.areas import AREAS, areas_of, in_area, source_name
from openaddr.db import make_engine, upgrade
from openaddr.db.collect import ZipRow, collect_runs, current_zips, record_zips
from openaddr.db.jobs import complete_set, create_job, create_set
from openaddr.db.runs import copy_run, finish_run, insert_run
from openaddr.db.schema import runs, zips
from openaddr.outputs import (
    _NUMBER,
    STATE_KEYS,
    csv_header,
    encode_address_csv,
    encode_feature_geojson,
    write_package,
    write_state,
)
from openaddr.storage import LocalStorage, open_storage
from tests.db_fixtures import BACKENDS, create_database, drop_database

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

NOW = dt.datetime(2026, 12, 7, 12, 30, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HEADER = b"LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH\r\n"

# --------------------------------------------------------------------------------------------------------------
# Areas


@pytest.mark.parametrize(
    ("source", "areas"),
    [
        ("us/ca/alameda", ["global", "us_west"]),
        ("us/ca", ["global", "us_west"]),
        ("us-ca", ["global", "us_west"]),
        ("us-ca-statewide", ["global", "us_west"]),
        ("us/ca.statewide", ["global", "us_west"]),
        ("us-ca.x", ["global", "us_west"]),
        ("us/ca-x", ["global"]),  # "us/st-" is not one of the prefixes
        ("us-ca/x", ["global"]),  # nor "us-st/"
        ("us/cal", ["global"]),
        ("usa", ["global"]),
        ("usa/ca", ["global"]),
        ("us", ["global"]),  # the whole country belongs to no US area, and not to north_america
        ("us/x", ["global"]),
        ("ca/on/toronto", ["global", "north_america"]),  # Canada, not California
        ("ca", ["global", "north_america"]),
        ("gb", ["global", "europe"]),
        ("gb/london", ["global", "europe"]),
        ("gb-london", ["global", "europe"]),
        ("gb.x", ["global", "europe"]),
        ("gbr/x", ["global"]),
        ("gbx", ["global"]),
        ("uk", ["global", "europe"]),
        ("el/attica", ["global", "europe"]),
        ("us/ny/nyc", ["global", "us_northeast"]),
        ("us/dc", ["global", "us_south"]),
        ("us/ne/omaha", ["global", "us_midwest"]),  # Nebraska
        ("ne/niamey", ["global"]),  # Niger is in no area
        ("is/reykjavik", ["global", "asia"]),
        ("au/nsw", ["global", "asia"]),
        ("nz", ["global", "asia"]),
        ("br/sp/sao-paulo", ["global", "south_america"]),
        ("mx", ["global", "north_america"]),
        ("pr/san-juan", ["global", "north_america"]),
        ("us/pr", ["global"]),  # Puerto Rico under us/ is no state
        ("ru/moscow", ["global"]),
        ("mt/valletta", ["global", "europe"]),  # Malta; Montana is us/mt
        ("us/mt/x", ["global", "us_west"]),
        ("US/CA", ["global"]),  # paths are lower case; the match is exact
    ],
)
def test_areas_of_a_source(source: str, areas: list[str]) -> None:
    assert areas_of(source) == areas


def test_every_area_has_its_list() -> None:
    assert AREAS == (
        "global", "us_northeast", "us_midwest", "us_south", "us_west", "europe", "asia", "south_america",
        "north_america",
    )  # fmt: skip
    members = {
        "us_northeast": "ct me ma nh ri vt nj ny pa",
        "us_midwest": "il in mi oh wi ia ks mn mo ne nd sd",
        "us_south": "de fl ga md nc sc va dc wv al ky ms ar la ok tx tn",
        "us_west": "az co id mt nv nm ut wy ak ca hi or wa",
        "europe": "be bg cz dk de ee ie el es fr hr it cy lv lt lu hu mt nl at pl pt ro si sk fi se uk gr gb",
        "asia": "af am az bh bd bt bn kh cn cx cc io ge hk in id ir iq il jp jo kz kp kr kw kg la lb mo my mv mn "
        "mm np om pk ph qa sa sg lk sy tw tj th tr tm ae uz vn ye ps as au nz ck fj pf gu ki mp mh fm um nr nc "
        "nu nf pw pg sb tk to tv vu wf ws is",
        "south_america": "ar bo br cl co ec gf gy pe py sr uy ve",
        "north_america": "ai ag aw bs bb bz bm bq vg ca ky cr cu cw dm do sv gl gd gp gt ht hn jm mq mx pm ms kn ni "
        "pa pr sx lc vc tt tc vi",
    }
    for area, codes in members.items():
        for code in codes.split():
            name = f"us/{code}/x" if area.startswith("us_") else f"{code}/x"
            assert in_area(name, area), (area, code)
            assert areas_of(name)[0] == "global"
        # and nothing else matches: a code outside the list is not in the area
        others = {c for a, cs in members.items() if a != area for c in cs.split()} - set(codes.split())
        for code in others:
            name = f"us/{code}/x" if area.startswith("us_") else f"{code}/x"
            assert not in_area(name, area), (area, code)


def test_source_name() -> None:
    assert source_name("sources/us/ca/alameda.json") == "us/ca/alameda"
    with pytest.raises(ValueError, match="not a source path"):
        source_name("us/ca/alameda.json")


@pytest.mark.parametrize(
    ("value", "index"),
    [(37.8, 378), (37.85, 378), (37.79999, 377), (-122.25, -1223), (-122.2, -1222), (-0.05, -1), (0.0, 0),
     (0.3, 3), (0.7, 7), (1.1, 11), (90.0, 900), (-180.0, -1800), (179.99, 1799), (-0.0, 0)],
)  # fmt: skip
def test_square_is_the_floor_of_the_decimal(value: float, index: int) -> None:
    assert square(value) == index


def test_repository_of_the_sources_location() -> None:
    assert repository_of("github:someone/fork@main") == ("someone", "fork")
    assert repository_of("/srv/openaddresses") == ("openaddresses", "openaddresses")


# --------------------------------------------------------------------------------------------------------------
# The generated world


def rows_near(lon: float, lat: float, count: int, street: str) -> list[tuple[str, ...]]:
    """``count`` valid address rows around a point, 11 columns each."""
    return [
        (
            f"{lon + i * 0.013:.6f}",
            f"{lat + i * 0.007:.6f}",
            str(i + 1),
            street,
            "",
            "",
            "",
            "",
            "",
            f"id{i}",
            f"h{i}",
        )
        for i in range(count)
    ]


ALAMEDA = [
    ("-122.25", "37.81", "1", "Main St", "", "Oakland", "", "CA", "94601", "a1", "h1"),
    ("-122.25", "37.85", "2", "1st St, Rear", "", "Oakland", "", "CA", "94601", "a2", "h2"),
    ("-122.15", "37.8", "3", 'The "Oaks"', "B", "Oakland", "", "CA", "", "a3", "h3"),
]
ALAMEDA_CSV = (
    HEADER
    + b"-122.25,37.81,1,Main St,,Oakland,,CA,94601,a1,h1\r\n"
    + b'-122.25,37.85,2,"1st St, Rear",,Oakland,,CA,94601,a2,h2\r\n'
    + b'-122.15,37.8,3,"The ""Oaks""",B,Oakland,,CA,,a3,h3\r\n'
)
ALAMEDA_SUMMARY = (
    b"count,lon,lat,area\r\n"
    b'2,-122.3,37.8,"POLYGON((-122.3 37.8,-122.3 37.9,-122.2 37.9,-122.2 37.8,-122.3 37.8))"\r\n'
    b'1,-122.2,37.8,"POLYGON((-122.2 37.8,-122.2 37.9,-122.1 37.9,-122.1 37.8,-122.2 37.8))"\r\n'
)
ALAMEDA_SUMMARY_VRT = (
    "<OGRVRTDataSource>\n"
    '    <OGRVRTLayer name="alameda-summary">\n'
    '        <SrcDataSource relativeToVRT="1">alameda-summary.csv</SrcDataSource>\n'
    "        <GeometryType>wkbPolygon</GeometryType>\n"
    "        <LayerSRS>EPSG:4326</LayerSRS>\n"
    '        <GeometryField encoding="WKT" field="area" reportSrcColumn="false"/>\n'
    "    </OGRVRTLayer>\n"
    "</OGRVRTDataSource>\n"
)


def _row(lon: str, lat: str, n: str) -> tuple[str, ...]:
    return (lon, lat, n, "Unter den Linden", "", "Berlin", "", "", "10117", f"b{n}", f"hb{n}")


BERLIN = [
    _row("13.4", "52.5", "1"),
    _row("", "52.5", "2"),  # dropped: empty
    _row("nan", "52.5", "3"),  # dropped: not finite
    _row("13.4", "inf", "4"),  # dropped: not finite
    _row("181", "52.5", "5"),  # dropped: outside ±180
    _row("13.4", "-90.5", "6"),  # dropped: outside ±90
    _row("abc", "1", "7"),  # dropped: not a number
    _row("0", "0", "8"),  # kept: zero island is only flagged
    _row(" 13.41 ", "52.51", "9"),  # kept: blanks around a number
    _row("1e1", "5E1", "10"),  # kept: exponents
    _row("-180", "90", "11"),  # kept: the bounds themselves
    _row("1_0", "5", "12"),  # dropped: Python's float() takes it, a plain decimal it is not
]
BERLIN_CSV = (
    HEADER
    + b"13.4,52.5,1,Unter den Linden,,Berlin,,,10117,b1,hb1\r\n"
    + b"0,0,8,Unter den Linden,,Berlin,,,10117,b8,hb8\r\n"
    + b" 13.41 ,52.51,9,Unter den Linden,,Berlin,,,10117,b9,hb9\r\n"
    + b"1e1,5E1,10,Unter den Linden,,Berlin,,,10117,b10,hb10\r\n"
    + b"-180,90,11,Unter den Linden,,Berlin,,,10117,b11,hb11\r\n"
)
# A zip of an older writer: other columns, other order, no HASH.
TEXAS_LEGACY_CSV = (
    b"NUMBER,STREET,LAT,LON,EXTRA\r\n5,Congress Ave,30.27,-97.74,x\r\n6,Lamar Blvd,,-97.75,y\r\n"
)
TEXAS_CSV = HEADER + b"-97.74,30.27,5,Congress Ave,,,,,,,\r\n"


@dataclass
class World:
    """A database and storage with generated runs (see the module docstring)."""

    engine: sa.Engine
    url: str
    storage: LocalStorage
    folder: Path
    clock: dt.datetime = T0
    ids: dict[str, int] = field(default_factory=dict)

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(minutes=1)
        return self.clock

    def run(
        self,
        label: str,
        path: str,
        rows: Sequence[Sequence[str]] = (),
        *,
        set_id: int | None = None,
        job_id: str | None = None,
        name: str = "primary",
        first: bool = True,
        layer: str = "addresses",
        processed: bool = True,
        sample: bool = True,
        is_merged: bool | None = None,
        warning: str | None = None,
        accepted: bool | None = None,
        share_alike: str = "",
        website: str | None = "https://example.org",
        license: str | None = "CC0",
        attribution: tuple[str, str | None] = ("false", None),
        legacy_csv: bytes | None = None,
        finish: bool = True,
        features: tuple[Sequence[str | None], dict[str, list[str]]] | None = None,
    ) -> int:
        """Record (and publish) a run; ``features``: the geometries (GeoJSON text or None) and properties of
        another layer type's ``out.geojson`` (default: two empty polygons with a ``street``)."""
        started = self.tick()
        run_id = insert_run(
            self.engine, source_path=path, source_layer=layer, layer_name=name, set_id=set_id, job_id=job_id,
            is_merged=is_merged, started=started, now=started,
        )  # fmt: skip
        self.ids[label] = run_id
        if not finish:
            return run_id
        state_dir = self.folder / f"state-{run_id}"
        state_dir.mkdir()
        source = source_name(path)
        package = source if first else f"{source}-{name}"
        state: dict[str, Any] = dict.fromkeys(STATE_KEYS)
        state.update(
            {
                "source": path.rsplit("/", 1)[-1],
                "website": website,
                "license": license,
                "attribution required": attribution[0],
                "attribution name": attribution[1],
                "share-alike": share_alike,
                "address count": len(rows),
                "cache": "cache.zip",
                "sample": "sample.json" if sample else None,
            }
        )
        (state_dir / "cache.zip").write_bytes(b"not a real cache")
        (state_dir / "sample.json").write_text("[]")
        if processed and legacy_csv is None:
            points = [
                f'{{"type":"Point","coordinates":[{r[0]},{r[1]}]}}' if r[0] and r[1] else None for r in rows
            ]
            geometries = points if layer == "addresses" else ['{"type":"Polygon","coordinates":[]}'] * 2
            count = len(geometries)
            values = {"street": [r[3] for r in rows] or ["Lot"] * count}
            if features is not None:
                geometries, values = list(features[0]), features[1]
                count = len(geometries)
            (state_dir / "out.geojson").write_bytes(
                encode_feature_geojson(geometries, list(values), values, [f"h{i}" for i in range(count)])
            )
        if processed and layer == "addresses":
            zip_path = state_dir / f"{package.rsplit('/', 1)[-1]}.zip"
            if legacy_csv is None:
                csv_path = state_dir / "out.csv"
                csv_path.write_bytes(csv_header() + encode_address_csv(rows))
                write_package(zip_path, package, csv_path, website, license)
                csv_path.unlink()
            else:
                with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as legacy:
                    legacy.writestr("README.txt", "an old README\n")
                    legacy.writestr(f"{package}.vrt", "<OGRVRTDataSource/>\n")
                    legacy.writestr(f"{package}.csv", legacy_csv)
            state["processed"] = "out.csv"
        elif processed:
            state["processed"] = "out.geojson"
        write_state(state_dir, state)
        published = self.storage.publish_run(run_id, state_dir)
        urls = {"cache": published["cache.zip"], "sample": published["sample.json"]}
        for key, url in published.items():
            if layer == "addresses" and key.endswith(".zip") and not key.startswith("cache."):
                urls["processed"] = url
            elif layer != "addresses" and key == "out.geojson.gz":
                urls["processed"] = url
        finish_run(
            self.engine, run_id, state=state, urls=urls,
            attempt_started=started, warning=warning, now=self.tick(),
        )  # fmt: skip
        if accepted is not None:
            with self.engine.begin() as connection:
                connection.execute(sa.update(runs).where(runs.c.id == run_id).values(accepted=accepted))
        return run_id


def build_world(world: World) -> None:
    """Two completed sets, a newer incomplete one, CI jobs, and every case of the input rule."""
    engine = world.engine
    set1 = create_set(
        engine, owner="openaddresses", repository="openaddresses", commit_sha="1" * 40, now=world.tick()
    )
    w = world
    w.run("alameda-old", "sources/us/ca/alameda.json", rows_near(-122.2, 37.7, 4, "Old St"), set_id=set1)
    w.run(
        "copied-original", "sources/us/az/copied.json", rows_near(-112.0, 33.4, 2, "Copied Rd"), set_id=set1
    )
    w.run("failed-success", "sources/us/id/failed.json", rows_near(-116.2, 43.6, 2, "Boise Ave"), set_id=set1)
    w.run(
        "failing-old",
        "sources/us/mt/failing.json",
        rows_near(-110.0, 46.0, 2, "X"),
        set_id=set1,
        sample=False,
    )
    w.run("old-only", "sources/us/ak/old.json", rows_near(-149.9, 61.2, 2, "Anchorage"), set_id=set1)
    complete_set(engine, set1, now=w.tick())

    set2 = create_set(
        engine, owner="openaddresses", repository="openaddresses", commit_sha=COMMIT, now=w.tick()
    )
    w.run(
        "alameda", "sources/us/ca/alameda.json", ALAMEDA, set_id=set2, attribution=("true", "Alameda County")
    )
    w.run("statewide", "sources/us-ca-statewide.json", rows_near(-120.0, 36.0, 3, "State Rte 1"), set_id=set2)
    w.run(
        "nyc", "sources/us/ny/nyc.json", rows_near(-74.0, 40.7, 3, "Broadway"), set_id=set2, share_alike="true",
        website="https://nyc.example", license="ODbL", attribution=("true", "NYC Open Data"),
    )  # fmt: skip
    w.run("texas", "sources/us/tx.json", set_id=set2, legacy_csv=TEXAS_LEGACY_CSV)
    w.run("usa", "sources/usa/foo.json", rows_near(10.0, 10.0, 2, "Nowhere"), set_id=set2)
    w.run(
        "london", "sources/gb/london.json", rows_near(-0.1, 51.5, 2, "Strand"), set_id=set2, website=None,
        license=None, attribution=("true", None),
    )  # fmt: skip
    w.run("gbr", "sources/gbr/x.json", rows_near(-1.0, 52.0, 2, "Elsewhere"), set_id=set2)
    w.run("uk", "sources/uk.json", rows_near(-2.0, 53.0, 2, "High St"), set_id=set2, attribution=("", None))
    w.run("berlin", "sources/de/berlin.json", BERLIN, set_id=set2)
    w.run("nsw", "sources/au/nsw.json", rows_near(151.2, -33.9, 2, "George St"), set_id=set2)
    w.run(
        "sp", "sources/br/sp.json", rows_near(-46.6, -23.5, 2, "Av Paulista"), set_id=set2, share_alike="true"
    )
    w.run("toronto", "sources/ca/on/toronto.json", rows_near(-79.4, 43.7, 2, "Yonge St"), set_id=set2)
    w.run("mx", "sources/mx.json", rows_near(-99.1, 19.4, 2, "Reforma"), set_id=set2)
    w.run(
        "paris", "sources/fr/paris.json", rows_near(2.35, 48.85, 2, "Rue de Rivoli"), set_id=set2, name="city"
    )
    w.run(
        "paris-arr", "sources/fr/paris.json", rows_near(2.3, 48.8, 1, "Rue X"), set_id=set2, name="arrondissements",
        first=False,
    )  # fmt: skip
    w.run("unmerged-set", "sources/us/wa/unmerged.json", rows_near(-122.3, 47.6, 2, "Pike St"), set_id=set2)
    w.run("held-set", "sources/us/or/held.json", rows_near(-122.7, 45.5, 2, "Burnside"), set_id=set2)
    w.run("released-set", "sources/us/or/released.json", rows_near(-123.0, 44.9, 2, "Court St"), set_id=set2)
    w.run("unknown-set", "sources/us/nv/unknown.json", rows_near(-115.1, 36.2, 2, "Strip"), set_id=set2)
    w.run("newer-set", "sources/us/ut/newer.json", rows_near(-111.9, 40.8, 2, "State St"), set_id=set2)
    w.ids["copied"] = copy_run(engine, w.ids["copied-original"], set_id=set2, commit_sha=COMMIT, now=w.tick())
    w.run("failed-now", "sources/us/id/failed.json", set_id=set2, processed=False)
    w.run("failing-now", "sources/us/mt/failing.json", set_id=set2, processed=False)
    w.run(
        "partial",
        "sources/us/mt/partial.json",
        rows_near(-112.0, 46.6, 2, "Last Chance"),
        set_id=set2,
        sample=False,
    )
    w.run("pending-set", "sources/us/co/pending.json", rows_near(-105.0, 39.7, 2, "Colfax"), set_id=set2)
    w.run("parcels", "sources/us/hi/parcels.json", set_id=set2, layer="parcels", name="parcels")
    w.run("elsewhere", "sources/us/nm/elsewhere.json", rows_near(-106.6, 35.1, 2, "Central Ave"), set_id=set2)
    w.run("missing", "sources/us/wy/missing.json", rows_near(-104.8, 41.1, 2, "Lincolnway"), set_id=set2)
    complete_set(engine, set2, now=w.tick())

    # After the latest set: CI jobs and a newer set that is not complete.
    job = create_job(engine, task_files={"b" * 40: "sources/us/wa/unmerged.json"}, now=w.tick())
    w.run(
        "unmerged-pr",
        "sources/us/wa/unmerged.json",
        rows_near(0.0, 0.0, 9, "PR"),
        job_id=job,
        is_merged=False,
    )
    w.run("unknown-job", "sources/us/nv/unknown.json", rows_near(-115.1, 36.2, 3, "Job"), job_id=job)
    w.run(
        "held",
        "sources/us/or/held.json",
        rows_near(-122.7, 45.5, 5, "Held"),
        job_id=job,
        is_merged=True,
        warning="-50 %",
    )
    w.run(
        "rejected",
        "sources/us/or/held.json",
        rows_near(-122.7, 45.5, 6, "Rejected"),
        job_id=job,
        is_merged=True,
        accepted=False,
    )
    w.run(
        "released", "sources/us/or/released.json", rows_near(-123.0, 44.9, 4, "Released"), job_id=job, is_merged=True,
        warning="-60 %", accepted=True,
    )  # fmt: skip
    w.run("pending", "sources/us/co/pending.json", job_id=job, is_merged=True, finish=False)
    set3 = create_set(
        engine, owner="openaddresses", repository="openaddresses", commit_sha="3" * 40, now=w.tick()
    )
    w.run("newer", "sources/us/ut/newer.json", rows_near(-111.9, 40.8, 3, "Newer St"), set_id=set3)
    w.run("other-repo-set", "sources/us/ut/other.json", rows_near(-111.9, 40.8, 1, "Fork"), set_id=set3)

    # A processed zip recorded under another host, and one that has gone from storage.
    with engine.begin() as connection:
        elsewhere = runs.c.id == w.ids["elsewhere"]
        state = dict(connection.execute(sa.select(runs.c.state).where(elsewhere)).scalar_one())
        state["processed"] = "https://elsewhere.example/runs/1/us/nm/elsewhere.zip"
        connection.execute(sa.update(runs).where(elsewhere).values(state=state))
    w.storage.delete_keys([f"runs/{w.ids['missing']}/us/wy/missing.zip"])
    # A collection row of an earlier collect, to be marked not current.
    record_zips(
        engine, [ZipRow("https://old.example/openaddr-collected-global.zip", 10, 1, "global", "")], now=T0
    )


#: The CSV members of each collection, in order (the rest of each zip follows from them).
EXPECTED: dict[str, list[str]] = {
    "openaddr-collected-global.zip": [
        "au/nsw", "ca/on/toronto", "de/berlin", "fr/paris-arrondissements", "fr/paris", "gb/london", "gbr/x", "mx",
        "uk", "us-ca-statewide", "us/az/copied", "us/ca/alameda", "us/co/pending", "us/id/failed", "us/mt/partial",
        "us/nv/unknown", "us/or/held", "us/or/released", "us/tx", "us/ut/newer", "us/wa/unmerged", "usa/foo",
    ],
    "openaddr-collected-global-sa.zip": ["br/sp", "us/ny/nyc"],
    "openaddr-collected-us_northeast.zip": [],
    "openaddr-collected-us_northeast-sa.zip": ["us/ny/nyc"],
    "openaddr-collected-us_midwest.zip": [],
    "openaddr-collected-us_midwest-sa.zip": [],
    "openaddr-collected-us_south.zip": ["us/tx"],
    "openaddr-collected-us_south-sa.zip": [],
    "openaddr-collected-us_west.zip": [
        "us-ca-statewide", "us/az/copied", "us/ca/alameda", "us/co/pending", "us/id/failed", "us/mt/partial",
        "us/nv/unknown", "us/or/held", "us/or/released", "us/ut/newer", "us/wa/unmerged",
    ],
    "openaddr-collected-us_west-sa.zip": [],
    "openaddr-collected-europe.zip": ["de/berlin", "fr/paris-arrondissements", "fr/paris", "gb/london", "uk"],
    "openaddr-collected-europe-sa.zip": [],
    "openaddr-collected-asia.zip": ["au/nsw"],
    "openaddr-collected-asia-sa.zip": [],
    "openaddr-collected-south_america.zip": [],
    "openaddr-collected-south_america-sa.zip": ["br/sp"],
    "openaddr-collected-north_america.zip": ["ca/on/toronto", "mx"],
    "openaddr-collected-north_america-sa.zip": [],
}  # fmt: skip

#: The run each collected entry comes from, by label (the input rule's decisions).
CHOSEN = {
    "us/wa/unmerged": "unmerged-set",  # a newer unmerged pull-request run does not count
    "us/nv/unknown": "unknown-job",  # merged unknown counts
    "us/or/held": "held-set",  # a newer run held by the gate (warning, not reviewed) or rejected does not count
    "us/or/released": "released",  # a run with a warning but accepted counts
    "us/ut/newer": "newer",  # the newest of all time, from a set that is not complete
    "us/az/copied": "copied",  # the set's copy is the newest success
    "us/id/failed": "failed-success",  # an older success beats a newer failure
    "us/mt/partial": "partial",  # a failed run with a processed zip contributes
    "us/co/pending": "pending-set",  # a pending run does not count
}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp(f"collect-{request.param}")
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
    built = World(engine, url_text, storage, folder)
    try:
        build_world(built)
        yield built
    finally:
        engine.dispose()
        if admin is not None:
            drop_database(admin, url)


@dataclass
class Collected:
    world: World
    result: Any
    files: dict[str, zipfile.ZipFile]


@pytest.fixture(scope="module")
def collected(world: World) -> Iterator[Collected]:
    result = collect(world.engine, world.storage, "latest", now=NOW, work_dir=world.folder)
    files = {
        key.split("/", 1)[1]: zipfile.ZipFile(world.storage.path(key))
        for key in world.storage.list_keys(COLLECTIONS_FOLDER)
        if key.endswith(".zip")
    }
    yield Collected(world, result, files)
    for handle in files.values():
        handle.close()


def csv_members(archive: zipfile.ZipFile) -> list[str]:
    return [
        n[: -len(".csv")] for n in archive.namelist() if n.endswith(".csv") and not n.startswith("summary/")
    ]


# --------------------------------------------------------------------------------------------------------------
# Input runs


def test_input_runs_follow_the_rule(world: World) -> None:
    found = collect_runs(world.engine, 2)
    chosen = {source_name(r["source_path"]): r["id"] for r in found if r["layer_name"] != "arrondissements"}
    ids = world.ids
    for source, label in CHOSEN.items():
        assert chosen[source] == ids[label], source
    assert chosen["us/mt/failing"] == ids["failing-now"]  # failures only: the newest, without a zip
    assert chosen["us/ca/alameda"] == ids["alameda"]
    assert chosen["us/hi/parcels"] == ids["parcels"]
    assert "us/ak/old" not in chosen  # not in the set
    assert "us/ut/other" not in chosen  # only in the incomplete set
    assert len(found) == 28
    # sorted by path, layer and name in code-point order on both backends
    keys = [(r["source_path"], r["source_layer"], r["layer_name"]) for r in found]
    assert keys == sorted(keys)
    assert keys.index(("sources/us-ca-statewide.json", "addresses", "primary")) < keys.index(
        ("sources/us/az/copied.json", "addresses", "primary")
    )


# --------------------------------------------------------------------------------------------------------------
# The published zips


def test_collections_with_stable_names(collected: Collected) -> None:
    address = [collection_name(area, attr) for area in AREAS for attr in ("", "sa")]
    geojson = [
        collection_name(area, attr, layer)
        for layer in ("addresses", "buildings", "parcels", "centerlines")
        for area in AREAS
        for attr in ("", "sa")
    ]
    parquet = [n.replace(".geojsonl.zip", ".parquet") for n in geojson]
    assert len(address) == 18
    assert len(geojson) == 72
    assert "openaddr-collected-us_west-sa-parcels.geojsonl.zip" in geojson
    keys = collected.world.storage.list_keys(COLLECTIONS_FOLDER)
    # no staging folder left behind
    assert keys == sorted(f"collections/{n}" for n in address + geojson + parquet)
    assert [c.name for c in collected.result.collections][:18] == address
    assert {c.name for c in collected.result.collections[18:90]} == set(geojson)
    assert {c.name for c in collected.result.collections[90:]} == set(parquet)
    for c in collected.result.collections:
        assert c.url == f"http://files.test/storage/collections/{c.name}"
        assert (c.layer is None) == (c.name in address)
        assert c.format == ("zip" if c.name in address else "geojsonl" if c.name in geojson else "parquet")


def test_area_assignment_and_member_order(collected: Collected) -> None:
    for name, members in EXPECTED.items():
        archive = collected.files[name]
        assert csv_members(archive) == members, name
        expected_names = ["README.txt"]
        for member in members:
            expected_names += [
                f"{member}.vrt", f"{member}.csv", f"summary/{member}-summary.csv", f"summary/{member}-summary.vrt",
            ]  # fmt: skip
        expected_names.append("LICENSE.txt")
        assert archive.namelist() == expected_names, name
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.date_time == (2026, 12, 7, 12, 30, 0)
        assert archive.testzip() is None


def test_readme_text(collected: Collected) -> None:
    expected = (
        "Data collected around 2026-12-07 by OpenAddresses (http://openaddresses.io).\n"
        "\n"
        "Address data is essential infrastructure. Street names, house numbers and\n"
        "postal codes, when combined with geographic coordinates, are the hub that\n"
        "connects digital to physical places.\n"
        "\n"
        "Data licenses can be found in LICENSE.txt.\n"
        "\n"
        "Data source information can be found at\n"
        f"https://github.com/openaddresses/openaddresses/tree/{COMMIT}/sources\n"
    ).encode()
    for archive in collected.files.values():
        assert archive.read("README.txt") == expected


def test_license_text(collected: Collected) -> None:
    assert collected.files["openaddr-collected-europe.zip"].read("LICENSE.txt") == (
        b"Data collected by OpenAddresses (http://openaddresses.io).\n"
        b"\n"
        b"de/berlin\nWebsite: https://example.org\nLicense: CC0\nRequired attribution: No\n"
        b"\n"
        b"fr/paris-arrondissements\nWebsite: https://example.org\nLicense: CC0\nRequired attribution: No\n"
        b"\n"
        b"fr/paris\nWebsite: https://example.org\nLicense: CC0\nRequired attribution: No\n"
        b"\n"
        b"gb/london\nWebsite: Unknown\nLicense: Unknown\nRequired attribution: Yes\n"
        b"\n"
        b"uk\nWebsite: https://example.org\nLicense: CC0\nRequired attribution: Yes\n"
    )
    assert collected.files["openaddr-collected-us_northeast-sa.zip"].read("LICENSE.txt") == (
        b"Data collected by OpenAddresses (http://openaddresses.io).\n"
        b"\n"
        b"us/ny/nyc\nWebsite: https://nyc.example\nLicense: ODbL\nRequired attribution: NYC Open Data\n"
    )
    assert collected.files["openaddr-collected-us_midwest.zip"].read("LICENSE.txt") == (
        b"Data collected by OpenAddresses (http://openaddresses.io).\n"
    )


def test_csv_members_are_rewritten(collected: Collected) -> None:
    west = collected.files["openaddr-collected-us_west.zip"]
    assert west.read("us/ca/alameda.csv") == ALAMEDA_CSV
    europe = collected.files["openaddr-collected-europe.zip"]
    assert europe.read("de/berlin.csv") == BERLIN_CSV
    assert collected.files["openaddr-collected-us_south.zip"].read("us/tx.csv") == TEXAS_CSV
    # the same bytes in global
    assert collected.files["openaddr-collected-global.zip"].read("de/berlin.csv") == BERLIN_CSV


def test_chosen_runs_supply_the_rows(collected: Collected) -> None:
    west = collected.files["openaddr-collected-us_west.zip"]
    streets = {
        member: {line.split(b",")[3].decode() for line in west.read(f"{member}.csv").splitlines()[1:]}
        for member in ("us/wa/unmerged", "us/nv/unknown", "us/or/held", "us/or/released", "us/ut/newer")
    }
    assert streets == {
        "us/wa/unmerged": {"Pike St"},
        "us/nv/unknown": {"Job"},
        "us/or/held": {"Burnside"},
        "us/or/released": {"Released"},
        "us/ut/newer": {"Newer St"},
    }


def test_other_members_are_copied(collected: Collected) -> None:
    west = collected.files["openaddr-collected-us_west.zip"]
    run_zip = collected.world.storage.path(f"runs/{collected.world.ids['alameda']}/us/ca/alameda.zip")
    with zipfile.ZipFile(run_zip) as original:
        assert west.read("us/ca/alameda.vrt") == original.read("us/ca/alameda.vrt")
    assert collected.files["openaddr-collected-us_south.zip"].read("us/tx.vrt") == b"<OGRVRTDataSource/>\n"


def test_summary_csv_and_vrt(collected: Collected) -> None:
    west = collected.files["openaddr-collected-us_west.zip"]
    assert west.read("summary/us/ca/alameda-summary.csv") == ALAMEDA_SUMMARY
    assert west.read("summary/us/ca/alameda-summary.vrt").decode() == ALAMEDA_SUMMARY_VRT
    berlin = collected.files["openaddr-collected-europe.zip"].read("summary/de/berlin-summary.csv")
    assert berlin.splitlines() == [
        b"count,lon,lat,area",
        b'1,0.0,0.0,"POLYGON((0.0 0.0,0.0 0.1,0.1 0.1,0.1 0.0,0.0 0.0))"',
        b'1,10.0,50.0,"POLYGON((10.0 50.0,10.0 50.1,10.1 50.1,10.1 50.0,10.0 50.0))"',
        b'2,13.4,52.5,"POLYGON((13.4 52.5,13.4 52.6,13.5 52.6,13.5 52.5,13.4 52.5))"',
        b'1,-180.0,90.0,"POLYGON((-180.0 90.0,-180.0 90.1,-179.9 90.1,-179.9 90.0,-180.0 90.0))"',
    ]  # sorted by (lat, lon)


def test_summary_vrt_reads_the_polygons_with_gdal(collected: Collected, tmp_path: Path) -> None:
    import pyogrio
    from shapely import from_wkb

    west = collected.files["openaddr-collected-us_west.zip"]
    west.extract("summary/us/ca/alameda-summary.csv", tmp_path)
    west.extract("summary/us/ca/alameda-summary.vrt", tmp_path)
    vrt = tmp_path / "summary" / "us" / "ca" / "alameda-summary.vrt"
    info = pyogrio.read_info(vrt)
    assert info["layer_name"] == "alameda-summary"
    assert info["geometry_type"] == "Polygon"
    assert info["crs"] == "EPSG:4326"
    meta, _, geometry, fields = pyogrio.raw.read(vrt)
    assert [str(v) for v in fields[list(meta["fields"]).index("count")]] == ["2", "1"]
    bounds = [tuple(round(b, 6) for b in from_wkb(g).bounds) for g in geometry]
    assert bounds == [(-122.3, 37.8, -122.2, 37.9), (-122.2, 37.8, -122.1, 37.9)]


def geojson_members(archive: zipfile.ZipFile) -> list[str]:
    return [n for n in archive.namelist() if n.endswith(".geojsonl")]


def test_geojson_collections(collected: Collected) -> None:
    files = collected.files
    # Address entries: the members of the CSV collections, named <source>/<name>, but the legacy zip without GeoJSON.
    for name, members in EXPECTED.items():
        layered = name.replace(".zip", "-addresses.geojsonl.zip")
        expected = [
            {"fr/paris-arrondissements": "fr/paris/arrondissements", "fr/paris": "fr/paris/city"}.get(
                m, f"{m}/primary"
            )
            + ".geojsonl"
            for m in members
            if m != "us/tx"
        ]
        archive = files[layered]
        assert archive.namelist() == ["README.txt", *expected, "LICENSE.txt"], layered
        assert archive.read("README.txt") == files[name].read("README.txt")
    assert geojson_members(files["openaddr-collected-global-parcels.geojsonl.zip"]) == [
        "us/hi/parcels/parcels.geojsonl"
    ]
    assert geojson_members(files["openaddr-collected-us_west-parcels.geojsonl.zip"]) == [
        "us/hi/parcels/parcels.geojsonl"
    ]
    for area in AREAS:
        for attr in ("", "sa"):
            for layer in ("buildings", "centerlines"):
                assert geojson_members(files[collection_name(area, attr, layer)]) == []
    assert files["openaddr-collected-us_west-parcels.geojsonl.zip"].read("LICENSE.txt") == (
        b"Data collected by OpenAddresses (http://openaddresses.io).\n"
        b"\n"
        b"us/hi/parcels/parcels\nWebsite: https://example.org\nLicense: CC0\nRequired attribution: No\n"
    )


def test_geojson_features_are_copied_as_published(collected: Collected) -> None:
    import gzip

    storage = collected.world.storage
    ids = collected.world.ids
    west = collected.files["openaddr-collected-us_west-addresses.geojsonl.zip"]
    published = gzip.decompress(storage.get_bytes(f"runs/{ids['alameda']}/out.geojson.gz"))
    assert west.read("us/ca/alameda/primary.geojsonl") == published
    assert published.splitlines()[1] == (
        b'{"type":"Feature","geometry":{"type":"Point","coordinates":[-122.25,37.85]},'
        b'"properties":{"hash":"h1","street":"1st St, Rear"}}'
    )
    parcels = collected.files["openaddr-collected-global-parcels.geojsonl.zip"]
    assert parcels.read("us/hi/parcels/parcels.geojsonl") == gzip.decompress(
        storage.get_bytes(f"runs/{ids['parcels']}/out.geojson.gz")
    )
    assert collected.result.geojson_skipped.keys() == {ids["texas"]}
    assert "out.geojson.gz does not exist" in collected.result.geojson_skipped[ids["texas"]]
    assert ids["parcels"] in collected.result.runs


def test_dropped_rows_are_counted(collected: Collected) -> None:
    ids = collected.world.ids
    assert collected.result.dropped == {ids["berlin"]: 7, ids["texas"]: 1}
    assert collected.result.null_island == {ids["berlin"]: 1}


def test_runs_left_out_are_reported(collected: Collected) -> None:
    ids = collected.world.ids
    skipped = collected.result.skipped
    assert set(skipped) == {ids["elsewhere"], ids["missing"]}
    assert "is not in this storage" in skipped[ids["elsewhere"]]
    assert "does not exist" in skipped[ids["missing"]]
    assert ids["failing-now"] not in collected.result.runs  # no processed output: nothing to report


def test_zips_rows_are_current_with_sizes_and_counts(collected: Collected) -> None:
    storage = collected.world.storage
    with collected.world.engine.connect() as connection:
        rows = {r.url: r for r in connection.execute(sa.select(zips)).all()}
    old = rows.pop("https://old.example/openaddr-collected-global.zip")
    assert old.is_current is False
    assert len(rows) == 162  # 18 CSV zips, 72 GeoJSON zips, 72 GeoParquet files
    for c in collected.result.collections:
        row = rows[c.url]
        path = storage.path(f"collections/{c.name}")
        assert row.is_current is True
        assert row.content_length == path.stat().st_size
        assert row.collection == c.area
        assert row.license_attr == c.license_attr
        assert row.layer == c.layer
        assert row.datetime == NOW
        assert row.format == c.format
        if c.format == "parquet":
            assert row.address_count == c.address_count == pq.ParquetFile(path).metadata.num_rows
            continue
        with zipfile.ZipFile(path) as archive:
            if c.layer is None:
                lines = sum(len(archive.read(f"{m}.csv").splitlines()) - 1 for m in EXPECTED[c.name])
            else:
                lines = sum(
                    len(archive.read(n).splitlines()) for n in archive.namelist() if n.endswith(".geojsonl")
                )
        assert row.address_count == c.address_count == lines
    assert rows["http://files.test/storage/collections/openaddr-collected-global.zip"].address_count == 51


def test_record_zips_is_one_transaction(collected: Collected) -> None:
    engine = collected.world.engine
    before = current_zips(engine)
    good = ZipRow("http://files.test/storage/collections/x.zip", 1, 1, "global", "")
    bad = ZipRow("http://files.test/storage/collections/y.zip", 1, 1, "mars", "")  # violates the CHECK
    with pytest.raises(sa.exc.IntegrityError):
        record_zips(engine, [good, bad])
    assert current_zips(engine) == before  # nothing flipped, nothing inserted


def test_collect_split_by_area_equals_one_collect(collected: Collected) -> None:
    # What the DAG does: one collect per area (any order, none recording), then one step records them all.
    world = collected.world
    single = {c.name: c for c in collected.result.collections}
    files = {name: world.storage.get_bytes(f"{COLLECTIONS_FOLDER}/{name}") for name in single}
    rows = current_zips(world.engine)
    parts = [
        collect(world.engine, world.storage, 2, now=NOW, work_dir=world.folder, areas=[area], record=False)
        for area in reversed(AREAS)
    ]
    union = [c for part in parts for c in part.collections]
    assert len(union) == len(single) == 162  # 18 address zips, 72 GeoJSON and 72 GeoParquet collections
    assert {c.name: c for c in union} == single
    for c in union:
        assert world.storage.get_bytes(f"{COLLECTIONS_FOLDER}/{c.name}") == files[c.name], c.name
    assert {run for part in parts for run in part.runs} == set(collected.result.runs)
    dropped: dict[int, int] = {}
    for part in parts:
        for run, count in part.dropped.items():
            assert dropped.setdefault(run, count) == count  # every area counts a run's rows alike
    assert dropped == collected.result.dropped
    assert current_zips(world.engine) == rows  # nothing recorded by the areas
    record_collections(world.engine, [Collection.from_dict(c.as_dict()) for c in union], now=NOW)
    assert current_zips(world.engine) == rows
    with pytest.raises(ValueError, match="unknown collect areas"):
        collect(world.engine, world.storage, 2, now=NOW, areas=["mars"])
    with pytest.raises(ValueError, match="the dedupe needs every area"):
        collect(world.engine, world.storage, 2, now=NOW, areas=["europe"], dedupe=True)
    # The dedupe after the areas, from the published address collections: what one collect with it makes.
    members = next(part.members for part in parts if part.collections[0].area == "global")
    processed, stats = dedupe_published(
        world.engine, world.storage, 2, members, now=NOW, work_dir=world.folder
    )
    split = {c.name: world.storage.get_bytes(f"{COLLECTIONS_FOLDER}/{c.name}") for c in processed}
    assert len(split) == 18
    whole = collect(world.engine, world.storage, 2, now=NOW, work_dir=world.folder, dedupe=True, record=False)
    assert [c for c in whole.collections if c.name in split] == processed
    for name, data in split.items():
        assert world.storage.get_bytes(f"{COLLECTIONS_FOLDER}/{name}") == data, name
    assert {attr: s.dropped_global for attr, s in stats.items()} == {
        attr: s.dropped_global for attr, s in whole.dedupe.items()
    }


def test_license_text_reads_back() -> None:
    from openaddr.collect import parse_license_text
    from openaddr.collect.archive import LicenseBlock, license_text

    blocks = [
        LicenseBlock("us/ca/alameda", "https://a.example", "CC0", "false", None),
        LicenseBlock("gb/london", None, None, "true", None),
        LicenseBlock("us/ny/nyc", "https://nyc.example", "ODbL", "true", "NYC Open Data"),
        LicenseBlock("uk", "https://b.example", "OGL", "", None),
    ]
    text = license_text(blocks)
    assert license_text(parse_license_text(text)) == text
    assert parse_license_text(license_text([])) == []


def test_collect_again_replaces_rows_and_files(collected: Collected) -> None:
    world = collected.world
    later = NOW + dt.timedelta(days=1)
    again = collect(world.engine, world.storage, 2, now=later, work_dir=world.folder)
    current = current_zips(world.engine)
    assert len(current) == 162
    assert {row["url"] for row in current} == {c.url for c in again.collections}
    assert all(row["datetime"] == later for row in current)
    with zipfile.ZipFile(world.storage.path("collections/openaddr-collected-asia.zip")) as asia:
        assert asia.read("README.txt").startswith(b"Data collected around 2026-12-08 ")
    assert sorted(p.name for p in world.folder.iterdir() if p.name.startswith("openaddr-collect-")) == []


def test_unknown_or_incomplete_sets_are_refused(collected: Collected) -> None:
    world = collected.world
    with pytest.raises(LookupError, match="set 99 does not exist"):
        collect(world.engine, world.storage, 99, now=NOW)
    with pytest.raises(LookupError, match="set 3 is not complete"):
        collect(world.engine, world.storage, 3, now=NOW)
    with pytest.raises(LookupError, match="no completed set of someone/else"):
        collect(world.engine, world.storage, "latest", owner="someone", repository="else", now=NOW)


def test_collect_command(
    collected: Collected, capsys: pytest.CaptureFixture[str], no_machine_env: None
) -> None:
    world = collected.world
    status = main(
        ["collect", "latest", "--database", world.url, "--storage", str(world.storage.root),
         "--public-url", "http://files.test/storage", "--work-dir", str(world.folder / "work")]
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == "Set 2: 25 runs collected"
    assert out[1].startswith("openaddr-collected-global.zip\t")
    assert out[1].endswith(
        "\t51 addresses\thttp://files.test/storage/collections/openaddr-collected-global.zip"
    )
    assert len([line for line in out if line.startswith("openaddr-collected-")]) == 162
    assert "8 rows dropped for invalid coordinates, from 2 runs" in out
    assert "2 features without a usable geometry left out of the GeoParquet collections, from 1 runs" in out
    texas = world.ids["texas"]
    assert (
        f"Run {texas} not in the GeoJSON collections: {world.storage.url(f'runs/{texas}/out.geojson.gz')} does not exist"
        in out
    )
    assert (
        f"Run {world.ids['elsewhere']} left out: https://elsewhere.example/runs/1/us/nm/elsewhere.zip is not in this storage"
        in out
    )


def test_collect_command_needs_database_and_storage(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OPENADDR_DATABASE_URL", "OPENADDR_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["collect", "latest", "--storage", str(tmp_path)]) == 2
    assert "collect needs --database (or OPENADDR_DATABASE_URL)" in capsys.readouterr().err
    assert main(["collect", "latest", "--database", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "collect needs --storage (or OPENADDR_RESULTS)" in capsys.readouterr().err
    assert main(["collect", "last", "--database", "sqlite://", "--storage", str(tmp_path)]) == 2
    assert "SET must be a set id or 'latest'" in capsys.readouterr().err
    args = ["collect", "latest", "--database", "sqlite://", "--storage", str(tmp_path)]
    assert main([*args, "--repository", "openaddresses"]) == 2
    assert "--repository must be OWNER/NAME, not 'openaddresses'" in capsys.readouterr().err
    assert main(args) == 1  # an empty database has no table, let alone a set
    assert (
        "openaddr collect: cannot use the Machine database: (sqlite3.OperationalError) no such table: sets"
        in (capsys.readouterr().err)
    )


def collect_cli(world: World, *args: str) -> int:
    """``openaddr collect`` on the world's database and storage."""
    return main(
        ["collect", *args, "--database", world.url, "--storage", str(world.storage.root),
         "--public-url", "http://files.test/storage", "--work-dir", str(world.folder / "work")]
    )  # fmt: skip


def test_collect_command_split_by_area_equals_one_call(
    collected: Collected, capsys: pytest.CaptureFixture[str], no_machine_env: None
) -> None:
    # An operator's split run: the areas one at a time (--no-record, the --at the first one printed), then
    # --record-only --dedupe; the same zips rows and files as one `openaddr collect --dedupe` at that time.
    world = collected.world
    before = current_zips(world.engine)
    first, *others = reversed(AREAS)  # any order; global, the largest, last
    assert collect_cli(world, "2", "--area", first, "--no-record") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Set 2: ")
    assert [line.split("\t")[0] for line in out if line.startswith("openaddr-collected-")] == (
        parts_module.expected_names(first)
    )
    stamp = out[-3].split(" at ", 1)[1].split(",", 1)[0]
    at = dt.datetime.fromisoformat(stamp)
    assert at.tzinfo is not None
    assert at.microsecond == 0
    prefix = parts_module.parts_prefix(2, at)
    assert out[-3:] == [
        f"Not recorded: set 2 at {stamp}, areas {first} (kept in {prefix}/)",
        f"Areas left to build: {', '.join(AREAS[:-1])}: openaddr collect 2 --no-record --at {stamp} --area AREA",
        f"Record every area with: openaddr collect 2 --record-only --at {stamp} [--dedupe]",
    ]
    for area in others:
        assert collect_cli(world, "2", "--area", area, "--no-record", "--at", stamp) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"Record every area with: openaddr collect 2 --record-only --at {stamp} [--dedupe]" in out
    assert not any(line.startswith("Areas left to build") for line in out[-2:])
    assert current_zips(world.engine) == before  # nothing recorded by the areas
    assert world.storage.list_keys(prefix) == [f"{prefix}/{area}.json" for area in sorted(AREAS)]

    assert collect_cli(world, "2", "--record-only", "--at", stamp, "--dedupe") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Set 2: 25 runs collected"
    assert len([line for line in out if line.startswith("openaddr-collected-")]) == 180
    assert "8 rows dropped for invalid coordinates, from 2 runs" in out
    assert any(line.startswith("Dedupe open: ") for line in out)
    assert out[-1] == f"Recorded 180 collections of set 2 at {stamp} as the current ones"
    assert world.storage.list_keys(parts_module.PARTS_FOLDER) == []  # the parts are gone once recorded
    split_rows = current_zips(world.engine)
    assert len(split_rows) == 180
    assert all(row["datetime"] == at for row in split_rows)
    split_files = {key: world.storage.get_bytes(key) for key in world.storage.list_keys(COLLECTIONS_FOLDER)}
    split_lines = out

    assert collect_cli(world, "2", "--at", stamp, "--dedupe") == 0
    whole = capsys.readouterr().out.splitlines()
    assert current_zips(world.engine) == split_rows
    assert {key: world.storage.get_bytes(key) for key in world.storage.list_keys(COLLECTIONS_FOLDER)} == (
        split_files
    )
    # the same lines, in the same order, as one call prints (but for what only building sees)
    assert [line for line in whole if line.startswith(("openaddr-collected-", "Set ", "Dedupe "))] == [
        line for line in split_lines if line.startswith(("openaddr-collected-", "Set ", "Dedupe "))
    ]


def test_collect_command_record_only_refuses_missing_or_malformed_parts(
    collected: Collected, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = collected.world
    monkeypatch.delenv("OPENADDR_SCRATCH", raising=False)
    at = "2026-12-20T08:00:00+00:00"
    before = current_zips(world.engine)
    assert collect_cli(world, "2", "--record-only", "--at", at) == 1
    err = capsys.readouterr().err
    assert f"set 2 at {at}: no published collections of {', '.join(AREAS)}" in err
    assert collect_cli(world, "2", "--area", "europe", "--area", "asia", "--no-record", "--at", at) == 0
    capsys.readouterr()
    prefix = parts_module.parts_prefix(2, dt.datetime.fromisoformat(at))
    assert world.storage.list_keys(prefix) == [f"{prefix}/asia.json", f"{prefix}/europe.json"]
    # Another collect of asia (here the DAG's way, at another time) replaces its files: asia's part is discarded.
    later = NOW + dt.timedelta(days=20)
    collect(world.engine, world.storage, 2, now=later, work_dir=world.folder, areas=["asia"], record=False)
    assert world.storage.list_keys(parts_module.PARTS_FOLDER) == [f"{prefix}/europe.json"]
    assert collect_cli(world, "latest", "--record-only", "--at", "2026-12-20T09:00:00+01:00") == 1
    missing = [area for area in AREAS if area != "europe"]
    assert f"no published collections of {', '.join(missing)} (nothing under" in capsys.readouterr().err
    europe = world.storage.get_bytes(f"{prefix}/europe.json")
    for area in missing:  # the other areas' parts, from europe's; then some of them damaged
        world.storage.put_bytes(europe.replace(b"europe", area.encode()), f"{prefix}/{area}.json")
    part = json.loads(world.storage.get_bytes(f"{prefix}/global.json"))
    del part["collections"][-1]
    world.storage.put_bytes(json.dumps(part).encode(), f"{prefix}/global.json")
    assert collect_cli(world, "2", "--record-only", "--at", at) == 1
    assert (
        f"{prefix}/global.json: collections differ from the area's 18: missing "
        "['openaddr-collected-global-sa-centerlines.parquet'], unexpected [], 17 in all"
    ) in capsys.readouterr().err
    world.storage.put_bytes(b"[1, 2", f"{prefix}/global.json")
    assert collect_cli(world, "2", "--record-only", "--at", at) == 1
    assert f"{prefix}/global.json: not JSON" in capsys.readouterr().err
    part = json.loads(world.storage.get_bytes(f"{prefix}/asia.json"))
    part["collections"][3]["content_length"] = -1
    world.storage.put_bytes(json.dumps(part).encode(), f"{prefix}/global.json")
    assert collect_cli(world, "2", "--record-only", "--at", at) == 1
    assert f"{prefix}/global.json: area is 'asia', not 'global'" in capsys.readouterr().err
    world.storage.put_bytes(json.dumps(part).encode(), f"{prefix}/asia.json")
    world.storage.put_bytes(europe.replace(b"europe", b"global"), f"{prefix}/global.json")
    assert collect_cli(world, "2", "--record-only", "--at", at) == 1
    assert (
        f"{prefix}/asia.json: collection 3 ('openaddr-collected-asia-sa-addresses.geojsonl.zip'): "
        "content_length -1 is not a count" in capsys.readouterr().err
    )
    assert current_zips(world.engine) == before  # nothing recorded
    world.storage.delete_prefix(parts_module.PARTS_FOLDER)


def test_collect_command_help_names_every_area(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collect", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(repeatable): " + ", ".join(AREAS[:-1]) + " or " + AREAS[-1] + ";" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--area", "mars", "--no-record"], "unknown area 'mars': choose from " + ", ".join(AREAS)),
        (["--area", "europe", "--area", "x", "--area", "mars", "--no-record"], "unknown area 'mars', 'x': "),
        (
            ["--area", "europe", "--area", "asia", "--dedupe", "--no-record"],
            "--dedupe needs every area's address collections at once, not only europe, asia: build the areas "
            "with --no-record, then run --record-only --dedupe",
        ),
        (["--area", "europe", "--dedupe"], "--dedupe needs every area's address collections at once"),
        (["--dedupe", "--no-record"], "--dedupe runs once every area is published: give it to --record-only"),
        (["--area", "europe"], "--area builds part of a set: add --no-record"),
        (
            ["--area", "europe", "--record-only", "--at", "2026-12-07T12:00:00Z"],
            "--area goes with --no-record",
        ),
        (["--record-only"], "--record-only needs --at, the collection time the areas were built with"),
        (["--no-record", "--at", "2026-12-07 12:00"], "--at needs a zone (e.g. 2026-12-07 12:00+00:00)"),
        (["--no-record", "--at", "yesterday"], "--at must be an ISO 8601 time with a zone"),
        (["--no-record", "--record-only"], "argument --record-only: not allowed with argument --no-record"),
    ],
    ids=[
        "unknown-area",
        "unknown-areas",
        "dedupe-with-areas",
        "dedupe-with-area-recording",
        "dedupe-no-record",
        "area-recording",
        "area-record-only",
        "record-only-without-at",
        "at-without-zone",
        "at-malformed",
        "no-record-and-record-only",
    ],  # fmt: skip
)
def test_collect_command_split_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Refused before the database or storage is touched: exit status 2, the problem named, no traceback.
    database = tmp_path / "never.db"
    assert (
        main(["collect", "2", "--database", f"sqlite:///{database}", "--storage", str(tmp_path), *args]) == 2
    )
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not database.exists()


# --------------------------------------------------------------------------------------------------------------
# The CSV rewrite against the plain reader-and-writer one


def reference_rewrite(data: bytes) -> tuple[bytes, int]:
    """What §8 asks, written the obvious way: csv.reader, stats.json's number pattern, csv.writer."""
    number = re.compile(_NUMBER)
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    header = next(reader, None) or []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(OUTPUT_COLUMNS)
    dropped = 0

    def valid(row: list[str], column: str, limit: float) -> bool:
        if column not in header or header.index(column) >= len(row):
            return False
        text = row[header.index(column)].strip()
        return bool(number.match(text)) and abs(float(text)) <= limit

    for row in reader:
        if not row:
            continue
        if not (valid(row, "LON", 180) and valid(row, "LAT", 90)):
            dropped += 1
            continue
        writer.writerow(
            [
                row[header.index(c)] if c in header and header.index(c) < len(row) else ""
                for c in OUTPUT_COLUMNS
            ]
        )
    return out.getvalue().encode("utf-8", "surrogateescape"), dropped


TRICKY = [
    HEADER
    + b'1,2,3,"Main St, Rear",,,,,,,h\r\n'
    + b'1.5,2.5,4,"The ""Oaks""",,,,,,,h\r\n'
    + b'3,4,5,"Two\nLines",,,,,,,h\n'  # a quoted line break, and LF line ends
    + b"\r\n"  # a blank line
    + b"5,6,7,Short row\r\n"  # 4 fields
    + b"7,8,9,Long row,,,,,,,h,extra\r\n"  # 12 fields
    + b'9,10,11,Mid"quote,,,,,,,h\r\n'  # a quote inside an unquoted field
    + b"-1,-2,12,K\xc3\xb6ln,,,,,,,h\r"  # a lone CR line end, non-ASCII text
    + b"\xd9\xa1,2,13,Arabic-Indic digit,,,,,,,h\r\n"  # float() takes it, the pattern does not
    + b"+1.,.5,14,Signs,,,,,,,h\r\n"
    + b"1,2,15,No line end,,,,,,,h",
    b'STREET,LON,EXTRA,LAT\r\n"A, B",1,x,2\r\nC,,y,3\r\nD,4,z,5\r\n',  # other columns, other order
    HEADER + b"1,2,3,Stra\xdfe,,,,,,,h\r\n1\xff,2,4,Bad byte in LON,,,,,,,h\r\n",  # bytes that are not UTF-8
    b"LON,LAT\r\n",  # a header only
    b"",  # nothing at all
    HEADER  # out.csv's columns: what the chunked path settles line by line, then a lone CR
    + b"".join(b"%d.5,%d.25,%d,Plain St,,,,,,,h\r\n" % (i % 170, i % 80, i) for i in range(40))
    + b'1,2,3,"Main St, Rear",,,,,,,h\r\n'  # quoted, written back as it was
    + b'1,2,3,"Needless quotes",,,,,,,h\r\n'  # quoted, rewritten without them
    + b"x,2,4,Bad LON,,,,,,,h\r\n"
    + b" 1.5 ,\t2,5,Blanks around,,,,,,,h\r\n"
    + b"1e1,2E-1,6,Exponents,,,,,,,h\r\n"
    + b"1e,2,7,Half an exponent,,,,,,,h\r\n"
    + b"nan,2,8,NaN,,,,,,,h\r\n"
    + b",,9,Empty,,,,,,,h\r\n"
    + b"\r\n"  # a blank line
    + b"5,6,10,LF only,,,,,,,h\n"
    + b"5,6,11,Short\r\n"
    + b"7,8,12,Long,,,,,,,h,extra\r\n"
    + b'9,10,13,Mid"quote,,,,,,,h\r\n'
    + b"1\xff,2,14,Bad byte in LON,,,,,,,h\r\n"
    + b"1,2\xff,15,Bad byte in LAT,,,,,,,h\r\n"
    + b"0,0,16,Null island,,,,,,,h\r\n"
    + b"-180,90,17,Corner,,,,,,,h\r\n"
    + b"180.0000001,0,18,Just outside,,,,,,,h\r\n"
    + b"".join(b"%d.5,%d.25,%d,Plain St,,,,,,,h\r\n" % (i % 170, i % 80, i) for i in range(40))
    + b"3,4,19,Lone\rCR,,,,,,,h\r\n"
    + b"".join(b"%d.5,%d.25,%d,Plain St,,,,,,,h\r\n" % (i % 170, i % 80, i) for i in range(10)),
    HEADER  # out.csv's columns and a quoted line break: line by line from there on
    + b"".join(b"%d.5,%d.25,%d,Plain St,,,,,,,h\r\n" % (i % 170, i % 80, i) for i in range(30))
    + b'1,2,3,"Two\r\nLines",,,,,,,h\r\n'
    + b"".join(b"%d.5,%d.25,%d,Plain St,,,,,,,h\r\n" % (i % 170, i % 80, i) for i in range(30))
    + b"1,2,15,No line end,,,,,,,h",
]
TRICKY_IDS = ["ours", "legacy", "latin-1", "header-only", "empty", "chunked", "chunked-multiline"]


@pytest.mark.parametrize("chunk", [None, 64, 1000])
@pytest.mark.parametrize("data", TRICKY, ids=TRICKY_IDS)
def test_rewrite_equals_the_plain_rewrite(
    data: bytes, chunk: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks put chunk ends everywhere: inside records, after a CR, inside a quoted field.
    if chunk is not None:
        monkeypatch.setattr(collect_archive, "_CHUNK", chunk)
    source = tmp_path / "run.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("README.txt", "readme")
        archive.writestr("x/y.csv", data)
    targets = [CollectionZip(tmp_path / f"{n}.zip", "readme", (2026, 1, 1, 0, 0, 0)) for n in ("a", "b")]
    result = add_run_zip(source, targets)
    for target in targets:
        target.close()
    expected, dropped = reference_rewrite(data)
    for n in ("a", "b"):
        with zipfile.ZipFile(tmp_path / f"{n}.zip") as written:
            assert written.read("x/y.csv") == expected
            assert written.namelist() == [
                "README.txt", "x/y.csv", "summary/x/y-summary.csv", "summary/x/y-summary.vrt", "LICENSE.txt",
            ]  # fmt: skip
    assert result.dropped == dropped
    assert (
        result.rows
        == len(list(csv.reader(io.StringIO(expected.decode("utf-8", "surrogateescape"), newline="")))) - 1
    )
    assert targets[0].address_count == targets[1].address_count == result.rows


def test_plain_number_texts_cast_exactly_when_the_pattern_matches() -> None:
    # _parse_numbers casts texts of these bytes without the pattern: every text of them up to five long.
    import itertools

    import pyarrow as pa
    import pyarrow.compute as pc

    number = re.compile(_NUMBER)
    alphabet = "09.+-eE"
    assert set(alphabet.encode()) <= set(collect_archive._PLAIN_NUMBER_BYTES)
    for length in range(1, 6):
        for chars in itertools.product(alphabet, repeat=length):
            text = "".join(chars)
            try:
                value = pc.cast(pa.array([text]), pa.float64())[0].as_py()
            except pa.ArrowInvalid:
                value = None
            assert (value is not None) == bool(number.match(text)), text
            assert value is None or value == float(text), text
    texts = ["1.5", " 1.5", "", "nan", "1e", "-0", "+.5", "7.", "\u0661", "1_0"]
    expected = [float(t.strip()) if number.match(t.strip()) else None for t in texts]
    parsed = collect_archive._parse_numbers(texts)
    assert [None if v != v else v for v in parsed.tolist()] == expected


def test_members_sharing_a_deflate_stay_in_step(tmp_path: Path) -> None:
    import contextlib

    targets = [CollectionZip(tmp_path / f"{n}.zip", "readme", (2026, 1, 1, 0, 0, 0)) for n in "ab"]
    with contextlib.ExitStack() as stack:
        handles = collect_archive.open_members(stack, targets, "x.csv")
        for data in (b"one,", b"two," * 1000, b"three"):
            for handle in handles:
                handle.write(data)
    for target in targets:
        target.close()
    for n in "ab":
        with zipfile.ZipFile(tmp_path / f"{n}.zip") as written:
            assert written.read("x.csv") == b"one," + b"two," * 1000 + b"three"
            assert written.testzip() is None
    # Out of step: refused, never a member holding another's bytes.
    others = [CollectionZip(tmp_path / f"{n}.zip", "readme", (2026, 1, 1, 0, 0, 0)) for n in "cd"]
    with contextlib.ExitStack() as stack:
        handles = collect_archive.open_members(stack, others, "x.csv")
        handles[0].write(b"one")
        with pytest.raises(RuntimeError, match="same bytes in the same order"):
            handles[1].write(b"other")
        handles[1].write(b"one")  # back in step (the same constant object), so the members can close
    for target in others:
        target.discard()


def test_a_member_name_already_collected_is_skipped_and_reported(tmp_path: Path) -> None:
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    for path, street in ((first, "First"), (second, "Second")):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x/y.vrt", "vrt")
            archive.writestr("x/y.csv", HEADER + f"1,2,3,{street},,,,,,,h\r\n".encode())
    target = CollectionZip(tmp_path / "c.zip", "readme", (2026, 1, 1, 0, 0, 0))
    assert add_run_zip(first, [target]).duplicates == []
    assert add_run_zip(second, [target]).duplicates == ["x/y.vrt", "x/y.csv"]
    target.close()
    with zipfile.ZipFile(tmp_path / "c.zip") as written:
        assert written.read("x/y.csv") == HEADER + b"1,2,3,First,,,,,,,h\r\n"
        assert target.address_count == 1


# --------------------------------------------------------------------------------------------------------------
# Storage primitives collect relies on


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return open_storage(tmp_path / "storage")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/machine", multipart_threshold=5 << 20, multipart_chunksize=5 << 20)


def test_publish_files_and_local_file(any_storage: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.zip"
    with big.open("wb") as handle:  # above the multipart threshold: two parts on S3
        for i in range(6):
            handle.write(bytes([i]) * (1 << 20))
    small = tmp_path / "small.zip"
    small.write_bytes(b"small")
    any_storage.put_bytes(b"keep", "collections/other.txt")
    urls = any_storage.publish_files("collections", {"a.zip": big, "b.zip": small})
    assert urls == {
        "a.zip": any_storage.url("collections/a.zip"),
        "b.zip": any_storage.url("collections/b.zip"),
    }
    assert any_storage.list_keys("collections") == [
        "collections/a.zip",
        "collections/b.zip",
        "collections/other.txt",
    ]
    work = tmp_path / "work"
    work.mkdir()
    with any_storage.local_file("collections/a.zip", work) as path:
        assert path.read_bytes() == big.read_bytes()
    assert list(work.iterdir()) == []  # a download is removed when the block ends
    assert any_storage.key_of(urls["b.zip"]) == "collections/b.zip"
    assert any_storage.key_of("https://elsewhere.example/collections/b.zip") is None
    from openaddr.storage import ObjectNotFoundError

    with pytest.raises(ObjectNotFoundError), any_storage.local_file("collections/none.zip", work):
        pass


def test_publish_files_failing_upload_replaces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    storage.put_bytes(b"old a", "collections/a.zip")
    (tmp_path / "a.zip").write_bytes(b"new a")
    real = storage.put_file

    def failing(local: Path, key: str, **kw: Any) -> str:
        if key.endswith("/b.zip"):
            raise OSError("disk full")
        return real(local, key, **kw)

    monkeypatch.setattr(storage, "put_file", failing)
    with pytest.raises(OSError, match="disk full"):
        storage.publish_files("collections", {"a.zip": tmp_path / "a.zip", "b.zip": tmp_path / "a.zip"})
    assert storage.get_bytes("collections/a.zip") == b"old a"
    assert storage.list_keys("collections") == ["collections/a.zip"]


def test_finite_coordinate_rule_matches_stats() -> None:
    # The dropped rows are the rows stats.json counts as invalid_coordinates (openaddr.outputs.Stats).
    from openaddr.outputs import Stats

    stats = Stats()
    lons = [r[0] for r in BERLIN]
    lats = [r[1] for r in BERLIN]
    stats.add_coordinates(lons, lats)
    assert stats.invalid_coordinates == 7
    assert stats.null_island == 1


@pytest.mark.integration
def test_collect_on_s3(s3_bucket: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'machine.db'}"
    upgrade(url)
    engine = make_engine(url, poolclass=sa.NullPool)
    storage = open_storage(f"s3://{s3_bucket}/machine")
    world = World(engine, url, storage, tmp_path)  # World only publishes and deletes: any Storage
    set_id = create_set(
        engine, owner="openaddresses", repository="openaddresses", commit_sha=COMMIT, now=world.tick()
    )
    world.run("alameda", "sources/us/ca/alameda.json", ALAMEDA, set_id=set_id)
    world.run("berlin", "sources/de/berlin.json", BERLIN, set_id=set_id)
    complete_set(engine, set_id, now=world.tick())
    work = tmp_path / "work"
    work.mkdir()
    result = collect(engine, storage, "latest", now=NOW, work_dir=work)
    engine.dispose()
    assert len(storage.list_keys(COLLECTIONS_FOLDER)) == 162
    assert f"collections/{collection_name('global', '')}" in storage.list_keys(COLLECTIONS_FOLDER)
    assert result.dropped == {world.ids["berlin"]: 7}
    assert list(work.iterdir()) == []  # downloads and collections removed
    with storage.local_file("collections/openaddr-collected-global.zip", work) as path:
        with zipfile.ZipFile(path) as archive:
            assert archive.read("us/ca/alameda.csv") == ALAMEDA_CSV
            assert archive.read("de/berlin.csv") == BERLIN_CSV
            assert archive.read("summary/us/ca/alameda-summary.csv") == ALAMEDA_SUMMARY
    urls = {c.url for c in result.collections}
    assert all(u.startswith(f"{storage.endpoint_url}/{s3_bucket}/machine/collections/") for u in urls)
