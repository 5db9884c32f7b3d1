"""The Machine database (machine-ci.md §5, §6, §7) on SQLite and on a real PostgreSQL.

Every database test runs on both backends (``db``, ``db_url`` and ``empty_db_url`` from ``tests/db_fixtures.py``;
the PostgreSQL cases are marked ``integration`` and fail when the server is unreachable). Times are explicit, so the
reuse windows and the done/due race are tested at their edges.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import struct
import zipfile
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.db import (
    current_revision,
    default_database_url,
    downgrade,
    head_revision,
    make_engine,
    schema_differences,
    upgrade,
)
from openaddr.db.jobs import (
    complete_set,
    create_job,
    create_set,
    file_state,
    get_job,
    get_set,
    job_by_delivery,
    job_status,
    latest_completed_set,
    update_job,
)
from openaddr.db.runs import (
    CRASH_MESSAGE,
    OK_MESSAGE,
    REUSED_FAILURE_MESSAGE,
    AirflowTask,
    copy_run,
    find_reusable_run,
    finish_run,
    get_run,
    insert_run,
    job_runs,
    layer_digest,
    mark_try_failed,
    parse_duration,
    previous_run_times,
    public_state,
    run_message,
    slowest_first,
    task_run,
)
from openaddr.db.schema import jobs, runs, zips

if TYPE_CHECKING:
    from pathlib import Path


UTC = dt.UTC
NOW = dt.datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
PATH = "sources/us/wy/park.json"
DIGEST = "a" * 40
#: A complete state of an address entry (processing.md §9.7), as a successful run leaves it.
GOOD_STATE: dict[str, Any] = {
    "source": "park.json",
    "skipped": False,
    "cache": "cache.zip",
    "sample": "sample.json",
    "website": None,
    "license": None,
    "geometry type": "Point",
    "address count": 3,
    "version": None,
    "fingerprint": "0" * 32,
    "cache time": "0:00:02.500000",
    "processed": "out.csv",
    "process time": "0:00:01.250000",
    "output": "output.txt",
    "preview": None,
    "slippymap": None,
    "attribution required": "",
    "attribution name": None,
    "share-alike": "",
    "source problem": None,
    "code version": "8.0.0.dev0",
    "tests passed": None,
}
BAD_STATE = {
    **GOOD_STATE,
    "processed": None,
    "address count": 0,
    "source problem": "Could not conform source data",
}
FAILED = "Failed to produce processed data"


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def task(map_index: int = 0, try_number: int = 1, run_id: str = "ci__job") -> AirflowTask:
    return AirflowTask("ci_job", run_id, "process_source", map_index, try_number)


def record(
    db: sa.Connection,
    *,
    status: bool,
    at: dt.datetime,
    path: str = PATH,
    layer: str = "addresses",
    name: str = "primary",
    digest: str = DIGEST,
    **kwargs: Any,
) -> int:
    """A run recorded at ``at``, successful or not."""
    return insert_run(
        db,
        source_path=path,
        source_layer=layer,
        layer_name=name,
        layer_digest=digest,
        state=GOOD_STATE if status else BAD_STATE,
        started=at - dt.timedelta(minutes=5),
        now=at,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------------------
# Database URL and engine
# --------------------------------------------------------------------------------------------------------------


def test_default_database_url_prefers_the_variable(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/openaddr"
    assert default_database_url({"OPENADDR_DATABASE_URL": url, "OPENADDR_HOME": str(tmp_path)}) == url


def test_default_database_url_under_openaddr_home(tmp_path: Path) -> None:
    assert (
        default_database_url({"OPENADDR_HOME": str(tmp_path)}) == f"sqlite:///{tmp_path.resolve()}/machine.db"
    )


def test_default_database_url_under_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = default_database_url({})
    assert url == f"sqlite:///{tmp_path.resolve()}/var/machine.db"
    monkeypatch.chdir("/")
    assert default_database_url({}) != url  # relative to where it is asked, but written absolute
    assert sa.make_url(url).database == str(tmp_path.resolve() / "var" / "machine.db")


def test_sqlite_engine_creates_its_folder_and_enforces_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a/b/machine.db"
    upgrade(url)
    assert (tmp_path / "a" / "b" / "machine.db").is_file()
    engine = make_engine(url)
    with engine.begin() as connection, pytest.raises(sa.exc.IntegrityError):
        connection.execute(sa.insert(runs).values(source_path=PATH, job_id="no-such-job"))
    engine.dispose()


# --------------------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------------------


def test_migrations_create_the_declared_schema(empty_db_url: sa.URL) -> None:
    assert current_revision(empty_db_url) is None
    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision() == "0007_jobs_sequence"
    engine = make_engine(empty_db_url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert tables == {
        "jobs",
        "sets",
        "runs",
        "zips",
        "run_reviews",
        "api_tokens",
        "alerts",
        "subscriptions",
        "openaddr_alembic_version",
    }
    assert schema_differences(empty_db_url) == []


def test_schema_check_notices_a_drift(empty_db_url: sa.URL) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX runs_layer_digest")
        connection.exec_driver_sql("ALTER TABLE sets ADD COLUMN extra TEXT")
    engine.dispose()
    kinds = sorted(diff[0] for diff in schema_differences(empty_db_url))
    assert kinds == ["add_index", "remove_column"]


def test_migrations_go_down_and_up_again(empty_db_url: sa.URL) -> None:
    upgrade(empty_db_url)
    upgrade(empty_db_url)  # already at head: nothing to do
    downgrade(empty_db_url)
    assert current_revision(empty_db_url) is None
    engine = make_engine(empty_db_url)
    assert set(sa.inspect(engine).get_table_names()) <= {"openaddr_alembic_version"}
    engine.dispose()
    upgrade(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_zips_format_migration_fills_existing_rows(empty_db_url: sa.URL) -> None:
    """0004 gives the GeoJSON collections of 0003 ``geojsonl``, the rest ``zip``; going down drops the GeoParquet
    rows with the column."""
    upgrade(empty_db_url, "0003")
    engine = make_engine(empty_db_url)
    with engine.begin() as connection:
        for url, layer in (("https://x/a.zip", None), ("https://x/a-parcels.geojsonl.zip", "parcels")):
            connection.execute(
                sa.text(
                    "INSERT INTO zips (url, collection, license_attr, layer) VALUES (:u, 'global', '', :l)"
                ),
                {"u": url, "l": layer},
            )
    upgrade(empty_db_url)
    with engine.begin() as connection:
        rows = dict(connection.execute(sa.select(zips.c.url, zips.c.format)).all())
        assert rows == {"https://x/a.zip": "zip", "https://x/a-parcels.geojsonl.zip": "geojsonl"}
        connection.execute(
            sa.insert(zips).values(
                url="https://x/a-parcels.parquet", collection="global", license_attr="", layer="parcels",
                format="parquet",
            )
        )  # fmt: skip
    downgrade(empty_db_url, "0003")
    with engine.begin() as connection:
        urls = connection.execute(sa.text("SELECT url FROM zips ORDER BY url")).scalars().all()
    engine.dispose()
    assert urls == ["https://x/a-parcels.geojsonl.zip", "https://x/a.zip"]
    upgrade(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_job_numbers_continue_after_the_sequence_migration(empty_db_url: sa.URL) -> None:
    """0007 (PostgreSQL: ``jobs_sequence_seq``) numbers new jobs after the largest number given before; a
    rolled-back job leaves at most a gap, never a repeat; going down and up again still continues."""
    upgrade(empty_db_url, "0006_alerts")
    engine = make_engine(empty_db_url)
    with engine.begin() as connection:
        for number in (1, 2, 7):
            connection.execute(sa.insert(jobs).values(id=f"old-{number}", task_files={}, sequence=number))
    upgrade(empty_db_url)
    first = create_job(engine, task_files={"s": "sources/a.json"}, now=NOW)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:  # the same id: rolled back
        create_job(connection, task_files={"s": "sources/b.json"}, job_id=first, now=NOW)
    second = create_job(engine, task_files={"s": "sources/c.json"}, now=NOW)
    downgrade(empty_db_url, "0006_alerts")
    upgrade(empty_db_url)
    third = create_job(engine, task_files={"s": "sources/d.json"}, now=NOW)
    with engine.connect() as connection:
        numbers = dict(connection.execute(sa.select(jobs.c.id, jobs.c.sequence)).all())
    engine.dispose()
    assert numbers[first] == 8
    assert 8 < numbers[second] <= 10
    assert numbers[second] < numbers[third]
    assert len(set(numbers.values())) == len(numbers) == 6
    assert schema_differences(empty_db_url) == []


@pytest.mark.integration
def test_a_job_is_numbered_while_another_waits_uncommitted(postgres_database_url: sa.URL) -> None:
    """On PostgreSQL a job's insert takes no lock held to the commit (the webhook commits only after Airflow's
    answer): a second job is created and committed while the first is still open, and both get numbers."""
    engine = make_engine(postgres_database_url)
    try:
        with engine.connect() as first_connection:
            first_transaction = first_connection.begin()
            first = create_job(first_connection, task_files={"s": "sources/a.json"}, now=NOW)
            with engine.begin() as connection:
                connection.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # waiting would fail, not hang
                second = create_job(connection, task_files={"s": "sources/b.json"}, now=NOW)
            first_transaction.commit()
        with engine.connect() as connection:
            numbers = dict(
                connection.execute(
                    sa.select(jobs.c.id, jobs.c.sequence).where(jobs.c.id.in_([first, second]))
                ).all()
            )
    finally:
        engine.dispose()
    assert numbers[first] < numbers[second]


@pytest.mark.parametrize(
    ("table", "values"),
    [
        (zips, {"url": "https://x/openaddr-collected-mars.zip", "collection": "mars", "license_attr": ""}),
        (
            zips,
            {
                "url": "https://x/openaddr-collected-global-by.zip",
                "collection": "global",
                "license_attr": "by",
            },
        ),
        (
            zips,
            {"url": "https://x/a.geojsonl.zip", "collection": "global", "license_attr": "", "layer": "roads"},
        ),
        (
            zips,
            {
                "url": "https://x/a.gpkg",
                "collection": "global",
                "license_attr": "",
                "layer": "parcels",
                "format": "gpkg",
            },
        ),  # fmt: skip
        (runs, {"source_path": PATH, "source_layer": "address"}),
    ],
)
def test_enum_columns_are_checked(db: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
    with pytest.raises(sa.exc.IntegrityError), db.begin_nested():
        db.execute(sa.insert(table).values(values))


def test_enum_columns_accept_their_values(db: sa.Connection) -> None:
    url = "https://x/openaddr-collected-us_west-sa.zip"
    db.execute(sa.insert(zips).values(url=url, collection="us_west", license_attr="sa"))
    # by its URL: the session's PostgreSQL database holds the zips of the tests that committed (the site's collect)
    row = db.execute(sa.select(zips).where(zips.c.url == url)).one()
    assert (row.collection, row.license_attr, row.is_current, row.layer, row.format) == (
        "us_west", "sa", True, None, "zip",
    )  # fmt: skip


def test_timestamps_come_back_aware_in_utc(db: sa.Connection) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    set_id = create_set(
        db, owner="o", repository="r", commit_sha=None, now=dt.datetime(2025, 6, 1, 14, tzinfo=paris)
    )
    start = get_set(db, set_id)["datetime_start"]  # type: ignore[index]
    assert start == dt.datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert start.utcoffset() == dt.timedelta(0)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        create_set(db, owner="o", repository="r", commit_sha=None, now=dt.datetime(2025, 6, 1, 14))


# --------------------------------------------------------------------------------------------------------------
# Messages, digest, durations
# --------------------------------------------------------------------------------------------------------------


def _state(**changes: Any) -> dict[str, Any]:
    return {**GOOD_STATE, **changes}


@pytest.mark.parametrize(
    ("state", "kwargs", "message"),
    [
        (_state(), {}, OK_MESSAGE),
        (_state(processed=None), {}, "Failed to produce processed data"),
        (_state(sample=None), {}, "Failed to produce sample data"),
        (_state(cache=None), {}, "Failed to produce cache data"),
        # processed, then sample, then cache are checked: the last missing one wins (7.5.5's worker)
        (_state(processed=None, sample=None), {}, "Failed to produce sample data"),
        (_state(processed=None, cache=None), {}, "Failed to produce cache data"),
        (_state(processed=None, sample=None, cache=None), {}, "Failed to produce cache data"),
        (_state(processed=None, sample=None, cache=None, skipped=True), {}, OK_MESSAGE),
        (_state(processed=""), {}, "Failed to produce processed data"),
        (None, {}, CRASH_MESSAGE),
        (_state(), {"crashed": True}, CRASH_MESSAGE),
        (None, {"timed_out": dt.timedelta(hours=3)}, "Timed out after 3:00:00"),
        (_state(), {"timed_out": dt.timedelta(hours=12, minutes=30)}, "Timed out after 12:30:00"),
        (None, {"timed_out": dt.timedelta(days=1, hours=2, seconds=0.4)}, "Timed out after 1 day, 2:00:00"),
    ],
)
def test_run_message(state: dict[str, Any] | None, kwargs: dict[str, Any], message: str) -> None:
    assert run_message(state, **kwargs) == message


def test_layer_digest_is_sha1_of_canonical_json() -> None:
    # Written out by hand: sorted keys, no spaces, non-ASCII kept as UTF-8.
    canonical = '[{"a":"é","b":[1,{"c":null}]},{"name":"primary","protocol":"http"}]'
    digest = layer_digest({"b": [1, {"c": None}], "a": "é"}, {"protocol": "http", "name": "primary"})
    assert digest == hashlib.sha1(canonical.encode("utf-8")).hexdigest()


def test_layer_digest_is_stable_under_key_order() -> None:
    coverage = {"US Census": {"geoid": "56029", "state": "Wyoming"}, "country": "us"}
    entry = {"name": "primary", "conform": {"format": "shapefile", "number": {"function": "prefixed_number"}}}
    reordered_coverage = {"country": "us", "US Census": {"state": "Wyoming", "geoid": "56029"}}
    reordered_entry = {
        "conform": {"number": {"function": "prefixed_number"}, "format": "shapefile"},
        "name": "primary",
    }
    assert layer_digest(coverage, entry) == layer_digest(reordered_coverage, reordered_entry)
    assert len(layer_digest(coverage, entry)) == 40


BASE_COVERAGE = {"country": "us"}
BASE_ENTRY = {"name": "primary", "conform": {"format": "shapefile", "number": "NUM"}}


@pytest.mark.parametrize(
    ("coverage", "entry"),
    [
        pytest.param(
            BASE_COVERAGE, {**BASE_ENTRY, "conform": {"format": "shapefile", "number": "NUMBER"}}, id="field"
        ),
        pytest.param(
            BASE_COVERAGE, {**BASE_ENTRY, "conform": {"format": "shapefile", "number": ["NUM"]}}, id="list"
        ),
        pytest.param(BASE_COVERAGE, {**BASE_ENTRY, "skip": False}, id="added-key"),
        pytest.param(BASE_COVERAGE, {**BASE_ENTRY, "name": "city"}, id="name"),
        pytest.param({"country": "ca"}, BASE_ENTRY, id="coverage"),
        pytest.param(None, BASE_ENTRY, id="no-coverage"),
    ],
)
def test_layer_digest_changes_with_what_the_entry_depends_on(coverage: Any, entry: dict[str, Any]) -> None:
    assert layer_digest(coverage, entry) != layer_digest(BASE_COVERAGE, BASE_ENTRY)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00:02.123456", 2.123456),
        ("0:00:02", 2.0),
        ("3:00:00", 10800.0),
        ("1 day, 2:03:04", 93784.0),
        ("2 days, 0:00:00.500000", 172800.5),
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_public_state_replaces_names_that_are_set() -> None:
    state = _state(preview=None, cache="http://legacy.example/cache.zip")
    recorded = public_state(
        state,
        run_id=7,
        urls={
            "sample": "https://r/runs/7/sample.json",
            "processed": "https://r/runs/7/park.zip",
            "preview": "x",
        },
        process_hash="f" * 32,
    )
    assert recorded["sample"] == "https://r/runs/7/sample.json"
    assert recorded["processed"] == "https://r/runs/7/park.zip"
    assert recorded["cache"] == "http://legacy.example/cache.zip"  # not in urls: kept
    assert recorded["output"] == "output.txt"
    assert recorded["preview"] is None  # no file, no URL
    assert (recorded["run id"], recorded["process hash"]) == (7, "f" * 32)
    assert state["sample"] == "sample.json"  # the input is not changed
    with pytest.raises(ValueError, match="fingerprint"):
        public_state(state, run_id=7, urls={"fingerprint": "x"})


# --------------------------------------------------------------------------------------------------------------
# Jobs: status rules (§5 step 6)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "state"),
    [
        ([True], True),
        ([False], False),
        ([None], None),
        ([True, True, True], True),
        ([True, None], None),
        ([True, False], False),
        ([None, False], False),  # false if any is false, even while another is pending
        ([None, None, True], None),
        ([], True),
    ],
)
def test_file_state(statuses: list[bool | None], state: bool | None) -> None:
    assert file_state(statuses) is state


#: (entry statuses per file, expected file states, expected job status); None = a pending run.
JOB_CASES = [
    ({"a": [True]}, {"a": True}, True),
    ({"a": [False]}, {"a": False}, False),
    ({"a": [None]}, {"a": None}, None),
    ({"a": [True], "b": [True]}, {"a": True, "b": True}, True),
    ({"a": [True], "b": [None]}, {"a": True, "b": None}, None),
    ({"a": [False], "b": [None]}, {"a": False, "b": None}, False),  # a failure shows at once
    ({"a": [True, None], "b": [True]}, {"a": None, "b": True}, None),
    ({"a": [True, False], "b": [True]}, {"a": False, "b": True}, False),
    ({"a": [None, False], "b": [None]}, {"a": False, "b": None}, False),
    ({"a": [True, True, True], "b": [True, True]}, {"a": True, "b": True}, True),
]


@pytest.mark.parametrize(("files", "file_states", "status"), JOB_CASES)
def test_job_status_from_runs(
    db: sa.Connection,
    files: dict[str, list[bool | None]],
    file_states: dict[str, bool | None],
    status: bool | None,
) -> None:
    paths = {name: f"sources/{name}.json" for name in files}
    job_id = create_job(db, task_files={f"sha-{name}": path for name, path in paths.items()}, now=NOW)
    planned = {
        paths[name]: [("addresses", f"e{i}") for i in range(len(entries))] for name, entries in files.items()
    }
    update_job(db, job_id, planned=planned, now=NOW)
    index = 0
    for name, entries in files.items():
        for i, entry_status in enumerate(entries):
            common = {
                "source_path": paths[name],
                "source_layer": "addresses",
                "layer_name": f"e{i}",
                "job_id": job_id,
            }
            index += 1
            if entry_status is None:
                insert_run(db, **common, task=task(index), started=NOW)
            else:
                insert_run(
                    db, **common, state=GOOD_STATE if entry_status else BAD_STATE, started=NOW, now=NOW
                )
    job = update_job(db, job_id)
    assert job["file_states"] == {paths[name]: state for name, state in file_states.items()}
    assert job["status"] is status
    assert job_status(job["file_states"]) is status
    assert (job["datetime_end"] is None) == (None in file_states.values())


def test_job_files_stay_pending_until_every_planned_entry_has_a_run(db: sa.Connection) -> None:
    job_id = create_job(db, task_files={"s1": "sources/a.json", "s2": "sources/b.json"}, now=NOW)
    job = get_job(db, job_id)
    assert job is not None
    assert (job["status"], job["file_states"]) == (None, {"sources/a.json": None, "sources/b.json": None})

    # A run arrives before the plan is stored (the listener can be early): its file is still pending.
    common = {"job_id": job_id, "source_layer": "addresses", "now": NOW, "started": NOW}
    run_a = insert_run(db, source_path="sources/a.json", layer_name="primary", state=GOOD_STATE, **common)
    job = update_job(db, job_id)
    assert job["file_states"] == {"sources/a.json": True, "sources/b.json": None}

    update_job(db, job_id, planned={"sources/a.json": [("addresses", "primary"), ("parcels", "primary")]})
    job = update_job(db, job_id)  # the plan is kept between calls
    assert job["file_states"] == {"sources/a.json": None, "sources/b.json": None}
    assert job["file_results"]["sources/a.json"]["entries"][1] == {
        "layer": "parcels",
        "name": "primary",
        "run_id": None,
        "status": None,
        "message": None,
        "source_problem": None,
        "warning": None,
        "reused_run": None,
    }

    later = NOW + dt.timedelta(minutes=3)
    run_b = insert_run(
        db, source_path="sources/b.json", layer_name="primary", state=BAD_STATE, **{**common, "now": later}
    )
    job = update_job(db, job_id, planned={"sources/b.json": [("addresses", "primary")]}, now=later)
    assert (job["status"], job["file_states"]["sources/b.json"]) == (False, False)
    assert job["file_results"]["sources/b.json"]["message"] == FAILED
    assert job["file_results"]["sources/b.json"]["entries"][0]["run_id"] == run_b
    assert job["datetime_end"] is None  # a/parcels is still pending

    insert_run(
        db,
        source_path="sources/a.json",
        source_layer="parcels",
        layer_name="primary",
        job_id=job_id,
        state={**GOOD_STATE, "processed": "out.geojson"},
        now=later,
    )
    job = update_job(db, job_id, now=later)
    assert job["file_states"] == {"sources/a.json": True, "sources/b.json": False}
    assert job["status"] is False
    assert job["file_results"]["sources/a.json"]["message"] == OK_MESSAGE
    assert job["file_results"]["sources/a.json"]["entries"][0]["run_id"] == run_a
    assert job["datetime_end"] == later
    assert update_job(db, job_id, now=later + dt.timedelta(hours=1))["datetime_end"] == later  # kept


def test_job_records_reused_runs(db: sa.Connection) -> None:
    failed = record(db, status=False, at=days_ago(2))
    job_id = create_job(db, task_files={"s": PATH}, now=NOW)
    copy_id = copy_run(db, failed, job_id=job_id, commit_sha="c" * 40, now=NOW)
    job = update_job(db, job_id, planned={PATH: [("addresses", "primary")]})
    assert job["status"] is False
    assert job["file_results"][PATH]["message"] == REUSED_FAILURE_MESSAGE
    assert job["file_results"][PATH]["entries"][0]["reused_run"] == failed
    assert job["file_results"][PATH]["entries"][0]["run_id"] == copy_id


def test_create_job_orders_and_deduplicates(db: sa.Connection) -> None:
    first = create_job(db, task_files={"s": PATH}, github_delivery_id="d-1", github_event="push", now=NOW)
    second = create_job(
        db,
        task_files={"s": PATH},
        job_id="fixed-id",
        is_rerun=True,
        airflow_dag_run_id="ci__fixed-id",
        now=NOW,
    )
    assert len(first) == 36
    rows = {row.id: row for row in db.execute(sa.select(jobs))}
    assert rows[second].sequence == rows[first].sequence + 1
    assert (rows[second].is_rerun, rows[second].airflow_dag_run_id) == (True, "ci__fixed-id")
    found = job_by_delivery(db, "d-1")
    assert found is not None
    assert (found["id"], found["github_event"], found["task_files"]) == (first, "push", {"s": PATH})
    assert job_by_delivery(db, "d-2") is None
    with pytest.raises(sa.exc.IntegrityError), db.begin_nested():
        create_job(db, task_files={"s": PATH}, github_delivery_id="d-1")


# --------------------------------------------------------------------------------------------------------------
# Reuse (§5 step 1)
# --------------------------------------------------------------------------------------------------------------

#: (kind, runs as (age in days, status, changes), index of the run expected to be reused or None)
REUSE_CASES = [
    pytest.param("ci", [(9.9, True, {})], 0, id="ci-success-9.9-days"),
    pytest.param("ci", [(9.9, False, {})], 0, id="ci-failure-9.9-days"),
    pytest.param("ci", [(10, True, {})], None, id="ci-exactly-10-days"),
    pytest.param("ci", [(11, True, {})], None, id="ci-success-11-days"),
    pytest.param("batch", [(5.9, True, {})], 0, id="batch-success-5.9-days"),
    pytest.param("batch", [(6, True, {})], None, id="batch-exactly-6-days"),
    pytest.param("batch", [(7, True, {})], None, id="batch-success-7-days"),
    pytest.param("batch", [(1, False, {})], None, id="batch-failure-1-day"),
    pytest.param("batch", [(3, True, {}), (1, False, {})], 0, id="batch-older-success-over-newer-failure"),
    pytest.param("ci", [(3, True, {}), (1, False, {})], 1, id="ci-newest-even-if-failed"),
    pytest.param("ci", [(2, True, {}), (3, True, {})], 0, id="ci-newest-of-two"),
    pytest.param("batch", [(1, True, {"accepted": False})], None, id="batch-rejected-run"),
    pytest.param("batch", [(1, True, {"accepted": True})], 0, id="batch-accepted-run"),
    pytest.param("ci", [(1, True, {"digest": "b" * 40})], None, id="digest-changed"),
    pytest.param("ci", [(1, True, {"name": "city"})], None, id="other-name"),
    pytest.param("ci", [(1, True, {"layer": "parcels"})], None, id="other-layer"),
    pytest.param("ci", [(1, True, {"path": "sources/us/wy/teton.json"})], None, id="other-path"),
]


@pytest.mark.parametrize(("kind", "previous", "expected"), REUSE_CASES)
def test_find_reusable_run(
    db: sa.Connection, kind: str, previous: list[tuple[float, bool, dict[str, Any]]], expected: int | None
) -> None:
    ids = []
    for age, status, changes in previous:
        changes = dict(changes)
        accepted = changes.pop("accepted", None)
        run_id = record(db, status=status, at=days_ago(age), **changes)
        if accepted is not None:
            db.execute(sa.update(runs).where(runs.c.id == run_id).values(accepted=accepted))
        ids.append(run_id)
    found = find_reusable_run(
        db,
        source_path=PATH,
        source_layer="addresses",
        layer_name="primary",
        layer_digest=DIGEST,
        kind=kind,  # type: ignore[arg-type]
        now=NOW,
    )
    assert (found["id"] if found else None) == (ids[expected] if expected is not None else None)


def test_copies_and_pending_runs_are_never_reused(db: sa.Connection) -> None:
    original = record(db, status=True, at=days_ago(20))
    copy_run(db, original, job_id=create_job(db, task_files={"s": PATH}, now=NOW), now=days_ago(1))
    insert_run(
        db, source_path=PATH, source_layer="addresses", layer_name="primary", layer_digest=DIGEST, now=NOW
    )
    query = {
        "source_path": PATH,
        "source_layer": "addresses",
        "layer_name": "primary",
        "layer_digest": DIGEST,
        "now": NOW,
    }
    assert find_reusable_run(db, kind="ci", **query) is None
    assert find_reusable_run(db, kind="batch", **query) is None
    with pytest.raises(ValueError, match="reuse kind"):
        find_reusable_run(db, kind="nightly", **query)  # type: ignore[arg-type]


def test_copy_run_keeps_the_result_for_a_new_owner(db: sa.Connection) -> None:
    original = record(
        db,
        status=True,
        at=days_ago(2),
        source_id="1" * 40,
        source_data=b'{"coverage": {}}',
        stats={"count": 3},
        worker_id="host-a/12",
        commit_sha="0" * 40,
    )
    set_id = create_set(db, owner="openaddresses", repository="openaddresses", commit_sha="2" * 40, now=NOW)
    copy_id = copy_run(
        db, original, set_id=set_id, commit_sha="2" * 40, task=task(run_id="batch__1"), now=NOW
    )
    source, copy = get_run(db, original), get_run(db, copy_id)
    assert source is not None
    assert copy is not None
    assert copy_id != original
    for column in (
        "source_path",
        "source_id",
        "source_data",
        "source_layer",
        "layer_name",
        "layer_digest",
        "state",
    ):
        assert copy[column] == source[column], column
    assert copy["state"]["run id"] == original  # the copy keeps the original's state and its links
    assert (copy["status"], copy["message"], copy["copy_of"]) == (True, OK_MESSAGE, original)
    assert (copy["set_id"], copy["job_id"], copy["commit_sha"], copy["is_merged"]) == (
        set_id,
        None,
        "2" * 40,
        True,
    )
    assert (copy["datetime_tz"], copy["stats"], copy["address_count"]) == (NOW, {"count": 3}, 3)
    assert copy["airflow_ti"] == "ci_job/batch__1/process_source/0"
    # A retried task makes no second copy.
    assert (
        copy_run(db, original, set_id=set_id, task=task(run_id="batch__1", try_number=2), now=NOW) == copy_id
    )
    # No second copy (counted by what it copies: the PostgreSQL test database is shared with other test files).
    copies = sa.select(sa.func.count()).select_from(runs).where(runs.c.copy_of == original)
    assert db.execute(copies).scalar_one() == 1


def test_copy_run_of_a_failure(db: sa.Connection) -> None:
    failed = record(db, status=False, at=days_ago(1))
    copy = get_run(db, copy_run(db, failed, job_id=create_job(db, task_files={"s": PATH}, now=NOW), now=NOW))
    assert copy is not None
    assert (copy["status"], copy["message"], copy["is_merged"]) == (False, REUSED_FAILURE_MESSAGE, None)
    with pytest.raises(LookupError):
        copy_run(db, 999999, now=NOW)


def test_copy_run_never_turns_a_run_into_a_copy_of_itself(db: sa.Connection) -> None:
    # Attempt 1 recorded its run, then failed for another reason; attempt 2 finds that run as reusable.
    ti = task(3)
    run_id = insert_run(
        db,
        source_path=PATH,
        source_layer="addresses",
        layer_name="primary",
        layer_digest=DIGEST,
        task=ti,
        state=GOOD_STATE,
        started=days_ago(0.1),
        now=days_ago(0.05),
    )
    assert (
        copy_run(db, run_id, task=AirflowTask(ti.dag_id, ti.dag_run_id, ti.task_id, 3, 2), now=NOW) == run_id
    )
    run = get_run(db, run_id)
    assert run is not None
    assert (run["copy_of"], run["status"]) == (None, True)


# --------------------------------------------------------------------------------------------------------------
# Recording (§5 steps 4-5) and the done/due race
# --------------------------------------------------------------------------------------------------------------


def reserve(db: sa.Connection, ti: AirflowTask | None = None, started: dt.datetime = NOW) -> int:
    return insert_run(
        db,
        source_path=PATH,
        source_layer="addresses",
        layer_name="primary",
        layer_digest=DIGEST,
        job_id=None,
        task=ti,
        worker_id="worker-1/42",
        started=started,
    )


def test_a_reserved_run_is_pending(db: sa.Connection) -> None:
    run = get_run(db, reserve(db, task()))
    assert run is not None
    assert (run["status"], run["state"], run["message"], run["datetime_start"]) == (None, None, None, NOW)
    assert (run["airflow_dag_id"], run["airflow_dag_run_id"], run["airflow_task_id"]) == (
        "ci_job",
        "ci__job",
        "process_source",
    )
    assert (run["airflow_map_index"], run["airflow_try_number"], run["worker_id"]) == (0, 1, "worker-1/42")
    assert task_run(db, task()) == run
    assert task_run(db, task(map_index=1)) is None


def test_finish_run_records_a_success(db: sa.Connection) -> None:
    run_id = reserve(db, task())
    done = NOW + dt.timedelta(minutes=4)
    urls = {
        key: f"https://results.example/runs/{run_id}/{key}"
        for key in ("cache", "sample", "processed", "output")
    }
    assert finish_run(
        db,
        run_id,
        state=GOOD_STATE,
        attempt_started=NOW,
        try_number=1,
        urls=urls,
        process_hash="9" * 32,
        stats={"count": 3, "filled": {"number": 3}},
        is_merged=False,
        now=done,
    )
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"], run["datetime_tz"], run["is_merged"]) == (
        True,
        OK_MESSAGE,
        done,
        False,
    )
    assert run["state"]["processed"] == urls["processed"]
    assert (run["state"]["run id"], run["state"]["process hash"]) == (run_id, "9" * 32)
    assert (run["address_count"], run["cache_seconds"], run["process_seconds"]) == (3, 2.5, 1.25)
    assert (run["source_problem"], run["code_version"], run["stats"]["count"]) == (None, "8.0.0.dev0", 3)


def test_finish_run_records_a_failure(db: sa.Connection) -> None:
    run_id = reserve(db)
    assert finish_run(db, run_id, state=BAD_STATE, attempt_started=NOW, now=NOW + dt.timedelta(minutes=1))
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"], run["source_problem"]) == (
        False,
        FAILED,
        "Could not conform source data",
    )
    assert run["address_count"] == 0


def test_finish_run_records_a_crash(db: sa.Connection) -> None:
    run_id = reserve(db)
    assert finish_run(db, run_id, state=None, crashed=True, attempt_started=NOW, now=NOW)
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"], run["state"]) == (False, CRASH_MESSAGE, None)


def test_a_late_success_never_flips_a_timeout(db: sa.Connection) -> None:
    run_id = reserve(db, task())
    timeout_at = NOW + dt.timedelta(hours=3, minutes=5)
    assert finish_run(
        db,
        run_id,
        state=None,
        timed_out=dt.timedelta(hours=3),
        attempt_started=NOW,
        try_number=1,
        now=timeout_at,
    )
    late = finish_run(
        db,
        run_id,
        state=GOOD_STATE,
        attempt_started=NOW,
        try_number=1,
        now=timeout_at + dt.timedelta(minutes=10),
    )
    assert late is False
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["state"], run["message"]) == (False, None, "Timed out after 3:00:00")
    assert run["datetime_tz"] == timeout_at


def test_a_timeout_after_the_result_is_dropped(db: sa.Connection) -> None:
    run_id = reserve(db)
    assert finish_run(db, run_id, state=GOOD_STATE, attempt_started=NOW, now=NOW + dt.timedelta(hours=1))
    assert not finish_run(
        db,
        run_id,
        state=None,
        timed_out=dt.timedelta(hours=3),
        attempt_started=NOW,
        now=NOW + dt.timedelta(hours=3),
    )
    assert not finish_run(db, run_id, state=BAD_STATE, attempt_started=NOW, now=NOW + dt.timedelta(hours=4))
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"]) == (True, OK_MESSAGE)


def test_a_retry_after_a_failure_records_its_result(db: sa.Connection) -> None:
    run_id = reserve(db, task(try_number=1))
    assert finish_run(
        db, run_id, state=BAD_STATE, attempt_started=NOW, try_number=1, now=NOW + dt.timedelta(minutes=1)
    )
    retry_start = NOW + dt.timedelta(minutes=10)
    assert reserve(db, task(try_number=2), started=retry_start) == run_id  # the same run, pending again
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["state"], run["airflow_try_number"]) == (None, None, 2)
    assert finish_run(
        db, run_id, state=GOOD_STATE, attempt_started=retry_start, try_number=2, now=retry_start
    )
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"]) == (True, OK_MESSAGE)


def test_a_later_attempt_overrides_an_earlier_failure_without_reserving(db: sa.Connection) -> None:
    run_id = reserve(db)
    assert finish_run(db, run_id, state=BAD_STATE, attempt_started=NOW, now=NOW + dt.timedelta(minutes=1))
    later = NOW + dt.timedelta(minutes=2)
    assert finish_run(
        db, run_id, state=GOOD_STATE, attempt_started=later, now=later + dt.timedelta(minutes=1)
    )
    assert get_run(db, run_id)["status"] is True  # type: ignore[index]


def test_a_stale_attempt_is_dropped(db: sa.Connection) -> None:
    run_id = reserve(db, task(try_number=1))
    retry_start = NOW + dt.timedelta(minutes=30)
    reserve(db, task(try_number=2), started=retry_start)
    # The first attempt was presumed dead but still reports, before the second one does.
    assert not finish_run(db, run_id, state=BAD_STATE, attempt_started=NOW, try_number=1, now=retry_start)
    assert get_run(db, run_id)["status"] is None  # type: ignore[index]
    assert finish_run(
        db, run_id, state=GOOD_STATE, attempt_started=retry_start, try_number=2, now=retry_start
    )
    assert get_run(db, run_id)["status"] is True  # type: ignore[index]


def test_the_next_try_tells_a_failed_try_from_one_lost_with_its_worker(db: sa.Connection) -> None:
    """A try that raised marks its pending run; one whose process died leaves none (issue 16)."""
    from openaddr.machine.recording import previous_try

    run_id = reserve(db, task(try_number=1))
    lost = task_run(db, task(try_number=2))
    assert lost is not None
    assert previous_try(lost) == (
        f"previous try 1 was lost with its worker worker-1 (run {run_id}, task process 42, started "
        f"2025-06-15 12:00:00 UTC): it ended without recording a result or an error"
    )
    # The second try raises: its mark says so, and the run stays pending.
    reserve(db, task(try_number=2), started=NOW + dt.timedelta(minutes=1))
    assert mark_try_failed(db, task(try_number=1), "not this try") is None
    assert (
        mark_try_failed(db, task(try_number=2), "OperationalError: the server closed the connection")
        == run_id
    )
    failed = task_run(db, task(try_number=3))
    assert failed is not None
    assert failed["status"] is None
    assert previous_try(failed) == (
        f"previous try 2 of run {run_id} failed on worker-1: OperationalError: the server closed the connection"
    )
    # The third try resets the mark; a run with a result is never marked.
    reserve(db, task(try_number=3), started=NOW + dt.timedelta(minutes=2))
    assert get_run(db, run_id)["message"] is None  # type: ignore[index]
    assert finish_run(
        db, run_id, state=GOOD_STATE, attempt_started=NOW + dt.timedelta(minutes=2), try_number=3
    )
    assert mark_try_failed(db, task(try_number=3), "late") is None
    assert get_run(db, run_id)["message"] == OK_MESSAGE  # type: ignore[index]


def test_finish_run_of_an_unknown_run(db: sa.Connection) -> None:
    with pytest.raises(LookupError, match="999999"):
        finish_run(db, 999999, state=GOOD_STATE, attempt_started=NOW)


def test_insert_run_records_at_once(db: sa.Connection) -> None:
    run_id = insert_run(
        db,
        source_path="sources/broken.json",
        source_layer=None,
        layer_name=None,
        state={
            **BAD_STATE,
            "source problem": "Source does not match the schema",
            "sample": None,
            "cache": None,
        },
        now=NOW,
    )
    run = get_run(db, run_id)
    assert run is not None
    assert (run["status"], run["message"], run["source_problem"]) == (
        False,
        "Failed to produce cache data",
        "Source does not match the schema",
    )
    assert (run["datetime_tz"], run["is_merged"], run["state"]["run id"]) == (NOW, None, run_id)


# --------------------------------------------------------------------------------------------------------------
# Sets (§6)
# --------------------------------------------------------------------------------------------------------------


def test_sets_are_created_once_and_completed_once(db: sa.Connection) -> None:
    set_id = create_set(
        db, owner="oa", repository="oa", commit_sha="1" * 40, airflow_dag_run_id="s1", now=NOW
    )
    assert create_set(db, owner="oa", repository="oa", commit_sha="1" * 40, airflow_dag_run_id="s1") == set_id
    assert latest_completed_set(db, "oa", "oa") is None
    end = NOW + dt.timedelta(hours=6)
    complete_set(db, set_id, render_world="https://r/sets/1/world.png", now=end)
    complete_set(db, set_id, render_usa="https://r/sets/1/usa.png", now=end + dt.timedelta(hours=1))
    row = get_set(db, set_id)
    assert row is not None
    assert (row["datetime_start"], row["datetime_end"], row["commit_sha"]) == (NOW, end, "1" * 40)
    assert (row["render_world"], row["render_usa"], row["render_europe"]) == (
        "https://r/sets/1/world.png",
        "https://r/sets/1/usa.png",
        None,
    )
    assert latest_completed_set(db, "oa", "oa")["id"] == set_id  # type: ignore[index]
    with pytest.raises(LookupError):
        complete_set(db, 999999)


def _set_run(
    db: sa.Connection, set_id: int, path: str, name: str, cache: str | None, process: str | None
) -> None:
    insert_run(
        db,
        source_path=path,
        source_layer="addresses",
        layer_name=name,
        set_id=set_id,
        state={**GOOD_STATE, "cache time": cache, "process time": process},
        now=NOW,
    )


def test_previous_run_times(db: sa.Connection) -> None:
    old = create_set(db, owner="oa", repository="oa", commit_sha=None, now=days_ago(14))
    _set_run(db, old, "sources/a.json", "primary", "0:00:01", "0:00:01")
    complete_set(db, old, now=days_ago(13))
    previous = create_set(db, owner="oa", repository="oa", commit_sha=None, now=days_ago(7))
    _set_run(db, previous, "sources/a.json", "primary", "0:01:00", "0:00:30.500000")
    _set_run(db, previous, "sources/b.json", "primary", "1:00:00", "0:00:00")
    _set_run(db, previous, "sources/b.json", "city", "0:30:00", "0:15:00")  # entries of a path add up
    _set_run(db, previous, "sources/c.json", "primary", "0:00:05", None)  # no process time: unknown
    _set_run(db, previous, "sources/d.json", "primary", "0:00:05", "0:00:05")
    _set_run(db, previous, "sources/d.json", "parcels", None, None)  # one entry without times: unknown
    complete_set(db, previous, now=days_ago(6))
    other_repo = create_set(db, owner="me", repository="fork", commit_sha=None, now=days_ago(2))
    _set_run(db, other_repo, "sources/a.json", "primary", "9:00:00", "9:00:00")
    complete_set(db, other_repo, now=days_ago(1))
    unfinished = create_set(db, owner="oa", repository="oa", commit_sha=None, now=days_ago(1))
    _set_run(db, unfinished, "sources/a.json", "primary", "8:00:00", "8:00:00")
    current = create_set(db, owner="oa", repository="oa", commit_sha=None, now=NOW)

    times = previous_run_times(db, current)
    assert times == {"sources/a.json": pytest.approx(90.5), "sources/b.json": pytest.approx(6300.0)}
    assert previous_run_times(db, old) == {}
    paths = ["sources/d.json", "sources/a.json", "sources/c.json", "sources/b.json", "sources/e.json"]
    assert slowest_first(paths, times) == [
        "sources/c.json",
        "sources/d.json",
        "sources/e.json",
        "sources/b.json",
        "sources/a.json",
    ]


@pytest.mark.parametrize(
    ("times", "order"),
    [
        ({}, ["a", "b", "c"]),
        ({"a": 1.0, "b": 3.0, "c": 2.0}, ["b", "c", "a"]),
        ({"a": 5.0, "c": 5.0}, ["b", "a", "c"]),
        ({"b": 0.0}, ["a", "c", "b"]),
    ],
)
def test_slowest_first(times: dict[str, float], order: list[str]) -> None:
    assert slowest_first(["c", "a", "b"], times) == order


# --------------------------------------------------------------------------------------------------------------
# Real states from the conform engine
# --------------------------------------------------------------------------------------------------------------


def dbf_record_count(zip_path: Path, member: str) -> int:
    """Records in a DBF inside a zip, from its header (bytes 4-8, little-endian), read without GDAL."""
    with zipfile.ZipFile(zip_path) as archive:
        header = archive.read(member)[:8]
    return int(struct.unpack("<I", header[4:8])[0])


@pytest.fixture(scope="module")
def park_results(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """States of us-wy-park: conformed from the data alone, and processed with the data as its download."""
    from openaddr.download.cache import store_cache
    from openaddr.process import conform_entry, file_md5, run_entry
    from openaddr.sources import load_source

    root = tmp_path_factory.mktemp("park")
    data = fixtures / "data" / "us-wy-park.zip"
    entry = load_source(fixtures / "sources" / "us-wy-park.json").entries()[0]
    conformed = conform_entry(entry, data, root / "conformed", fingerprint=file_md5(data))

    def fetch(work: Path, state: dict[str, Any]) -> tuple[Path, str | None]:
        local = work / data.name
        shutil.copyfile(data, local)
        state["cache time"] = "0:00:00.100000"
        state["cache"], fingerprint = store_cache(local, root / "processed")
        return local, fingerprint

    processed = run_entry(entry, root / "processed", fetch)
    return {"entry": entry, "conformed": conformed, "processed": processed, "data": data}


def test_real_states_are_recorded_and_read_back(db: sa.Connection, park_results: dict[str, Any]) -> None:
    entry, data = park_results["entry"], park_results["data"]
    expected_count = dbf_record_count(data, "ParkCountyADDRESS_POINTS_point.dbf")
    digest = layer_digest(entry.source.document.get("coverage"), entry.data)
    job_id = create_job(db, task_files={"blob": "sources/us-wy-park.json"}, now=NOW)
    common = {
        "source_path": "sources/us-wy-park.json",
        "source_layer": entry.layer,
        "layer_name": entry.name,
        "layer_digest": digest,
        "job_id": job_id,
    }

    # Conformed without a download: no cache, so the Machine's rule calls it a failure.
    conformed = park_results["conformed"]
    first = insert_run(db, **common, task=task(0), started=NOW)
    assert finish_run(db, first, state=conformed.state, attempt_started=NOW, try_number=1, now=NOW)
    run = get_run(db, first)
    assert run is not None
    assert (run["status"], run["message"]) == (False, "Failed to produce cache data")
    assert run["address_count"] == expected_count

    # Processed with the data as its download: everything there, published under runs/<id>/.
    processed = park_results["processed"]
    second = insert_run(db, **common, task=task(1), started=NOW)
    base = f"https://results.example/runs/{second}"
    urls = {"cache": f"{base}/cache.zip", "sample": f"{base}/sample.json", "output": f"{base}/output.txt"}
    urls["processed"] = f"{base}/us-wy-park.zip"
    zipped = processed.directory / "us-wy-park.zip"
    process_hash = hashlib.md5(zipped.read_bytes()).hexdigest()
    stats = {"count": expected_count}
    assert finish_run(
        db,
        second,
        state=processed.state,
        attempt_started=NOW,
        try_number=1,
        urls=urls,
        process_hash=process_hash,
        stats=stats,
        now=NOW + dt.timedelta(seconds=30),
    )
    run = get_run(db, second)
    assert run is not None
    assert (run["status"], run["message"], run["address_count"]) == (True, OK_MESSAGE, expected_count)
    state = run["state"]
    assert list(state)[:22] == list(processed.state)  # the 22 keys in order, then the two the CI layer adds
    assert list(state)[22:] == ["run id", "process hash"]
    assert {key: state[key] for key in urls} == urls
    assert (state["run id"], state["process hash"]) == (second, process_hash)
    assert state["fingerprint"] == hashlib.md5(data.read_bytes()).hexdigest()
    assert state["source problem"] is None
    assert state["geometry type"] == processed.state["geometry type"]
    assert run["process_seconds"] == pytest.approx(parse_duration(processed.state["process time"]))
    assert run["cache_seconds"] == pytest.approx(0.1)

    # The reuse rule finds it for the same entry, and the job shows both entries' outcomes.
    found = find_reusable_run(
        db,
        kind="batch",
        now=NOW + dt.timedelta(days=1),
        **{k: common[k] for k in ("source_path", "source_layer", "layer_name", "layer_digest")},
    )
    assert found is not None
    assert found["id"] == second
    job = update_job(db, job_id, planned={"sources/us-wy-park.json": [(entry.layer, entry.name)]})
    assert [run["id"] for run in job_runs(db, job_id)] == [first, second]
    assert job["status"] is True  # the newest run of the entry stands


def test_db_upgrade_command_migrates_and_reports(
    empty_db_url: sa.URL, capsys: pytest.CaptureFixture[str]
) -> None:
    from openaddr.cli import main
    from openaddr.db import current_revision, head_revision

    assert main(["db-upgrade", empty_db_url.render_as_string(hide_password=False)]) == 0
    assert capsys.readouterr().out == f"Machine database at revision {head_revision()}\n"
    assert current_revision(empty_db_url) == head_revision()


def test_db_upgrade_command_names_an_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    from openaddr.cli import main

    assert (
        main(["db-upgrade", "postgresql+psycopg2://postgres@127.0.0.1:5432/openaddr_no_such_database"]) == 1
    )
    assert "openaddr_no_such_database" in capsys.readouterr().err
