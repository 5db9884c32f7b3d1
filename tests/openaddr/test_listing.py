"""openaddr.db.listing: the results site's pages of sets and jobs, current zips, and what is derived from runs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from openaddr.db import listing
from openaddr.db.jobs import create_job, create_set
from openaddr.db.runs import insert_run
from openaddr.db.schema import zips

T0 = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)


def test_sets_and_jobs_page_by_key_newest_first(db: sa.Connection) -> None:
    set_ids = [create_set(db, owner="o", repository="r", commit_sha=None, now=T0) for _ in range(5)]
    assert [row["id"] for row in listing.list_sets(db, limit=2)] == set_ids[::-1][:2]
    # Limits: the session's PostgreSQL database may hold older rows of other tests.
    assert [row["id"] for row in listing.list_sets(db, before=set_ids[3], limit=3)] == set_ids[:3][::-1]
    job_ids = [create_job(db, task_files={f"{n:040}": f"sources/{n}.json"}, now=T0) for n in range(4)]
    page = listing.list_jobs(db, limit=3)
    assert [row["id"] for row in page] == job_ids[::-1][:3]
    assert [row["id"] for row in listing.list_jobs(db, before=page[-1]["sequence"], limit=1)] == [job_ids[0]]


def test_the_newest_run_time_of_jobs_is_an_aware_datetime(db: sa.Connection) -> None:
    job = create_job(db, task_files={"1" * 40: "sources/a.json"}, now=T0)
    assert listing.newest_job_run_time(db, [job]) is None
    assert listing.newest_job_run_time(db, []) is None
    for minutes in (3, 9, 5):
        insert_run(
            db,
            source_path="sources/a.json",
            source_layer="addresses",
            layer_name=f"n{minutes}",
            job_id=job,
            message="Everything is fine",
            now=T0 + dt.timedelta(minutes=minutes),
        )
    assert listing.newest_job_run_time(db, [job, "other"]) == T0 + dt.timedelta(minutes=9)


def test_current_zips_leave_out_small_and_old_ones(db: sa.Connection) -> None:
    def row(url: str, collection: str, size: int, **extra: Any) -> dict[str, Any]:
        return {
            "url": url,
            "datetime": T0,
            "is_current": True,
            "content_length": size,
            "collection": collection,
            "license_attr": "",
            "layer": None,
            "format": "zip",
            "address_count": 10,
            **extra,
        }

    db.execute(
        sa.insert(zips),
        [
            row("parcels.parquet", "global", 3000, layer="parcels", format="parquet"),
            row("empty.parquet", "asia", 3000, layer="parcels", format="parquet", address_count=0),
            row("europe", "europe", 2048),
            row("global", "global", 1024),
            row("tiny", "asia", 1023),
            row("old", "asia", 5000, is_current=False),
            row("buildings", "global", 9000, layer="buildings", format="geojsonl"),
        ],
    )
    assert [zip_row["url"] for zip_row in listing.current_zips(db)] == [
        "global", "europe", "buildings", "parcels.parquet",
    ]  # fmt: skip


def run(**values: Any) -> dict[str, Any]:
    """A run as the database returns it, with only what these functions read."""
    base: dict[str, Any] = {
        "source_path": "sources/us/wy/park.json",
        "source_layer": "addresses",
        "layer_name": "primary",
        "status": True,
        "state": {},
        "message": None,
        "source_problem": None,
        "warning": None,
        "address_count": None,
        "code_version": None,
        "source_data": None,
    }
    base.update(values)
    return base


def test_problems_use_the_spec_phrases() -> None:
    log = "https://r.example/output.txt"
    assert listing.run_problems(run()) == []
    assert listing.run_problems(run(state={"skipped": True}, source_problem="Source says to skip")) == [
        {"text": "source says to skip", "url": None}
    ]
    assert listing.run_problems(run(status=False, state={"output": log})) == [
        {"text": "cache failed", "url": log}
    ]
    assert listing.run_problems(run(status=False, state={"cache": "c", "output": log})) == [
        {"text": "unknown", "url": log}
    ]
    assert listing.run_problems(
        run(status=False, state={"cache": "c"}, source_problem="Source is missing a conform object")
    ) == [{"text": "missing conform", "url": None}]
    assert listing.run_problems(
        run(source_problem="Missing or incomplete coverage", warning="50% fewer")
    ) == [
        {"text": "incomplete coverage", "url": None},
        {"text": "50% fewer", "url": None},
    ]
    assert listing.run_problems(run(status=False, state=None, message="Timed out after 3:00:00")) == [
        {"text": "Timed out after 3:00:00", "url": None}
    ]
    assert listing.run_problems(run(status=None, state=None)) == []


def test_summary_and_state_rows() -> None:
    runs = [
        run(state={"cache": "c", "processed": "p"}, address_count=5),
        run(source_layer="buildings", state={"cache": "c"}, status=False),
        run(source_path="sources/a.json", state={"skipped": True}),
        run(source_path="sources/b.json", state=None, status=False, code_version="8.0"),
    ]
    assert listing.summarize_runs(runs) == {
        "addresses": 5,
        "sources": 3,
        "runs": 4,
        "completed": 1,
        "failed_cache": 1,
        "not_processed": 1,
    }
    rows = listing.state_rows(runs, "https://site.example/")
    assert [(row[0], row[-2]) for row in rows] == [
        ("a.json", "addresses"),
        ("b.json", "addresses"),
        ("us/wy/park.json", "addresses"),
        ("us/wy/park.json", "buildings"),
    ]
    assert rows[1][listing.STATE_TXT_COLUMNS.index("code version")] == "8.0"
    assert rows[2][listing.STATE_TXT_COLUMNS.index("cache")] == "https://site.example/c"


def test_licenses_fall_back_to_the_source_entry() -> None:
    v2 = {
        "layers": {
            "addresses": [
                {"name": "other", "license": "no"},
                {"name": "primary", "license": {"text": "ODbL", "url": "u"}, "website": "https://w"},
            ]
        }
    }
    runs = [
        run(
            source_data=json.dumps(v2).encode(),
            state={"attribution required": "true", "attribution name": "City"},
        ),
        run(
            source_path="sources/v1.json",
            source_data=b'{"license": "ODbL", "website": "https://v1"}',
            state={},
        ),
        run(source_path="sources/broken.json", source_data=b"\xff", state={"license": "CC0"}),
    ]
    assert listing.license_groups(runs) == [
        {"license": "CC0", "attribution": None, "sources": [["broken.json", None]]},
        {"license": "ODbL", "attribution": None, "sources": [["v1.json", "https://v1"]]},
        {"license": "ODbL", "attribution": "City", "sources": [["us/wy/park.json", "https://w"]]},
    ]
