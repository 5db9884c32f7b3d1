"""Housekeeping (openaddr/housekeeping.py) on SQLite and PostgreSQL, with real files in a local folder and in S3
(moto's server on loopback).

One hand-made world per test: sets, jobs and runs inserted as rows with chosen ages (``NOW`` minus days; the
retention is 90 days), each run with files under ``runs/<id>/`` written through the storage, covering each rule
that keeps an old run (latest by each definition, collect input, copied, held, running set or job) and the runs
that go (older runs of an entry, a rejected run and its review, a stale pull-request run, an abandoned pending
run, a copy).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.cli import main
from openaddr.db import make_engine, upgrade
from openaddr.db.schema import jobs, run_reviews, runs, sets, zips
from openaddr.housekeeping import SweepError, collected_set_ids, sweep
from openaddr.storage import LocalStorage, Storage, StorageError, open_storage
from tests.db_fixtures import BACKENDS, drop_database

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
RETENTION = dt.timedelta(days=90)
OWNER, REPOSITORY = "openaddresses", "openaddresses"


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


# --------------------------------------------------------------------------------------------------------------
# Databases: a fresh one per test (the sweep commits), PostgreSQL's cloned from a migrated template


@pytest.fixture(scope="module")
def postgres_template(request: pytest.FixtureRequest) -> Iterator[sa.URL]:
    admin: sa.URL = request.getfixturevalue("postgres_admin_url")
    url = admin.set(database=f"openaddr_hk_template_{secrets.token_hex(4)}")
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    engine.dispose()
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(admin, url)


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "machine.db"
        path.write_bytes(template.read_bytes())
        machine = make_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
        yield machine
        machine.dispose()
        return
    admin: sa.URL = request.getfixturevalue("postgres_admin_url")
    template_url: sa.URL = request.getfixturevalue("postgres_template")
    url = admin.set(database=f"openaddr_hk_{secrets.token_hex(6)}")
    maker = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with maker.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{url.database}" TEMPLATE "{template_url.database}"')
    maker.dispose()
    machine = make_engine(url, poolclass=sa.NullPool)
    try:
        yield machine
    finally:
        machine.dispose()
        drop_database(admin, url)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(tmp_path / "storage")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/machine")


# --------------------------------------------------------------------------------------------------------------
# The world


@dataclass
class World:
    engine: sa.Engine
    storage: Storage
    ids: dict[str, int] = field(default_factory=dict)
    sets: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # label -> bytes stored

    def add_set(self, label: str, *, started: float, ended: float | None) -> int:
        with self.engine.begin() as connection:
            set_id = connection.execute(
                sa.insert(sets)
                .values(
                    owner=OWNER,
                    repository=REPOSITORY,
                    commit_sha="0" * 40,
                    datetime_start=ago(started),
                    datetime_end=None if ended is None else ago(ended),
                )
                .returning(sets.c.id)
            ).scalar_one()
        self.sets[label] = int(set_id)
        return int(set_id)

    def add_job(self, job_id: str, *, ended: float | None) -> str:
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(jobs).values(
                    id=job_id,
                    status=None if ended is None else True,
                    task_files={},
                    datetime_start=ago((ended or 0) + 1),
                    datetime_end=None if ended is None else ago(ended),
                )
            )
        return job_id

    def add_run(
        self,
        label: str,
        entry: str,
        days: float,
        *,
        status: bool | None = True,
        is_merged: bool | None = True,
        set_label: str | None = None,
        job_id: str | None = None,
        copy_of: str | None = None,
        warning: str | None = None,
        accepted: bool | None = None,
        files: bool = True,
    ) -> int:
        state = {"processed": f"runs/x/{entry}.zip"} if status else None
        with self.engine.begin() as connection:
            run_id = connection.execute(
                sa.insert(runs)
                .values(
                    source_path=f"sources/{entry}.json",
                    source_layer="addresses",
                    layer_name="city",
                    datetime_tz=ago(days),
                    datetime_start=ago(days),
                    state=state,
                    status=status,
                    is_merged=is_merged,
                    set_id=self.sets[set_label] if set_label else None,
                    job_id=job_id,
                    copy_of=self.ids[copy_of] if copy_of else None,
                    warning=warning,
                    accepted=accepted,
                    message="Everything is fine" if status else "Failed to produce processed data",
                )
                .returning(runs.c.id)
            ).scalar_one()
        self.ids[label] = int(run_id)
        if files and copy_of is None:  # a copy has no folder of its own
            zipped = f"zip of {label} ".encode() * 10
            state_json = json.dumps({"run id": run_id}).encode()
            self.storage.put_bytes(zipped, f"runs/{run_id}/{entry}.zip")
            self.storage.put_bytes(b"log", f"runs/{run_id}/output.txt")
            self.storage.put_bytes(state_json, f"runs/{run_id}/index.json")
            self.files[label] = len(zipped) + 3 + len(state_json)
        return int(run_id)

    def review(self, label: str, decision: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(run_reviews).values(
                    run_id=self.ids[label],
                    decision=decision,
                    reviewer="maintainer",
                    reviewer_kind="github",
                    decided_at=ago(95),
                    decided_run_id=self.ids[label],
                )
            )

    def remaining(self) -> set[str]:
        with self.engine.connect() as connection:
            present = set(connection.execute(sa.select(runs.c.id)).scalars())
        return {label for label, run_id in self.ids.items() if run_id in present}

    def stored(self, label: str) -> list[str]:
        return self.storage.list_keys(f"runs/{self.ids[label]}")


#: Runs a sweep at NOW keeps (with the rule that keeps each) and deletes.
KEPT = {
    "recent": "younger than the retention",
    "only-old": "the newest run of its entry (recorded, merged, accepted, successful)",
    "old-success": "the entry's latest successful run (its latest URL), older than two failures",
    "newest-failure": "the entry's newest recorded run, a failure",
    "original": "referenced by copy_of (the copy is recent)",
    "original-of-old-copy": "referenced by copy_of of an old copy deleted in the same sweep",
    "held": "held for review by the quality gate",
    "unknown-job-run": "the collect input (merged unknown) of the latest completed set, in no latest view",
    "collected-earlier": "the collect input of the set the current collections were built from",
    "in-running-set": "its set has not ended",
    "in-running-job": "its job has not ended",
    "pr-newest": "the newest recorded run of its entry, though not merged",
}
DELETED = {
    "oldest": "older run of an entry with a recent run",
    "older": "another older run of that entry",
    "older-failure": "a failure older than the entry's newest failure",
    "old-copy": "an old copy, not latest",
    "rejected": "rejected by a maintainer (its review row goes too)",
    "accepted-old": "accepted long ago, superseded (its review row goes too)",
    "stale-pr": "an old pull-request run superseded by merged runs",
    "abandoned-pending": "pending in a job that ended",
    "no-files": "an old run without files (nothing stored: fine)",
    "set-old-failure": "the failure in the completed set, superseded",
}


def build(engine: sa.Engine, storage: Storage) -> World:
    world = World(engine, storage)
    world.add_set("earlier", started=22, ended=21)  # the current collections were built from it (zips at 20)
    world.add_set("latest", started=3, ended=2)  # the latest completed set: the next collect's input
    world.add_set("running", started=1, ended=None)
    done = world.add_job("job-done", ended=100)
    running = world.add_job("job-running", ended=None)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(zips).values(
                url="http://files.test/collections/openaddr-collected-global.zip",
                datetime=ago(20),
                is_current=True,
                collection="global",
                license_attr="",
            )
        )
    # An entry run weekly: the old runs go, the recent ones stay.
    world.add_run("oldest", "us/ca/a", 200, set_label="earlier")
    world.add_run("older", "us/ca/a", 120, set_label="earlier")
    world.add_run("recent", "us/ca/a", 2, set_label="latest")
    # One old run only: the latest by every definition.
    world.add_run("only-old", "us/ca/b", 300)
    # Failing for months: the last success stays (the latest URL), and the newest failure.
    world.add_run("old-success", "us/ca/c", 250)
    world.add_run("older-failure", "us/ca/c", 150, status=False)
    world.add_run("newest-failure", "us/ca/c", 120, status=False)
    # Copies: an old original copied recently; an old original copied by an old copy.
    world.add_run("original", "us/ca/d", 200)
    world.add_run("copy", "us/ca/d", 5, copy_of="original", set_label="latest")
    world.add_run("original-of-old-copy", "us/ca/e", 300)
    world.add_run("old-copy", "us/ca/e", 200, copy_of="original-of-old-copy")
    world.add_run("e-recent", "us/ca/e", 1)
    # The quality gate: a held run stays; decided runs go with their reviews.
    world.add_run("held", "us/ca/f", 150, warning="Address count dropped 60 %")
    world.add_run("rejected", "us/ca/f", 140, warning="Address count dropped 70 %", accepted=False)
    world.add_run("accepted-old", "us/ca/f", 130, warning="Address count dropped 20 %", accepted=True)
    world.add_run("f-recent", "us/ca/f", 3)
    world.review("rejected", "rejected")
    world.review("accepted-old", "accepted")
    # Collect inputs that no latest view names: a job run whose merge is unknown, newest success of its entry,
    # the set's own run of the entry failing.
    world.add_run("unknown-job-run", "us/ca/g", 150, is_merged=None, job_id=done)
    world.add_run("set-old-failure", "us/ca/g", 100, status=False, set_label="earlier")
    world.add_run("g-set-failure", "us/ca/g", 2, status=False, set_label="latest")
    world.add_run("collected-earlier", "us/ca/h", 150, is_merged=None, job_id=done)
    world.add_run("h-set-failure", "us/ca/h", 21.5, status=False, set_label="earlier")  # not in "latest"
    # Runs of a set or a job still running.
    world.add_run("in-running-set", "us/ca/i", 200, status=None, set_label="running")
    world.add_run("in-running-job", "us/ca/i", 150, status=None, job_id=running)
    world.add_run("i-recent", "us/ca/i", 1)
    world.add_run("abandoned-pending", "us/ca/i", 120, status=None, job_id=done)
    # Pull requests: an old unmerged run superseded by a merged one goes; the newest run of an entry stays.
    world.add_run("stale-pr", "us/ca/j", 150, is_merged=False, job_id=done)
    world.add_run("j-recent", "us/ca/j", 4)
    world.add_run("j-merged-old", "us/ca/k", 200)
    world.add_run("pr-newest", "us/ca/k", 100, is_merged=False, job_id=done)
    # Without files.
    world.add_run("no-files", "us/ca/a", 110, files=False)
    return world


# --------------------------------------------------------------------------------------------------------------
# Tests


def test_the_sets_whose_collect_inputs_are_kept(engine: sa.Engine, storage: Storage) -> None:
    world = build(engine, storage)
    with engine.connect() as connection:
        assert collected_set_ids(connection) == {world.sets["earlier"], world.sets["latest"]}


def test_a_sweep_keeps_what_a_rule_keeps_and_deletes_the_rest(engine: sa.Engine, storage: Storage) -> None:
    world = build(engine, storage)
    everything = set(world.ids)
    result = sweep(engine, storage, now=NOW, retention=RETENTION, batch_size=3)
    remaining = world.remaining()
    for label, why in KEPT.items():
        assert label in remaining, f"{label} ({why}) was deleted"
        if label in world.files:
            assert world.stored(label), f"{label}: its files were deleted"
    for label, why in DELETED.items():
        assert label not in remaining, f"{label} ({why}) was kept"
    # "j-merged-old" is older than the newest (unmerged) run, but the newest merged: latest too.
    assert remaining == everything - set(DELETED)
    deleted_files = [label for label in DELETED if label in world.files]
    for label in deleted_files:
        assert storage.list_keys(f"runs/{world.ids[label]}") == []
    assert result.runs_deleted == len(DELETED)
    assert result.files_deleted == 3 * len(deleted_files)
    assert result.bytes_freed == sum(world.files[label] for label in deleted_files)
    assert result.reviews_deleted == 2
    assert result.batches >= 3
    assert not result.dry_run
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(run_reviews)).scalar_one() == 0
    # The copy deleted, its original is no longer referenced: the next week's sweep deletes it.
    again = sweep(engine, storage, now=NOW + dt.timedelta(days=7), retention=RETENTION)
    assert "original-of-old-copy" not in world.remaining()
    assert storage.list_keys(f"runs/{world.ids['original-of-old-copy']}") == []
    assert again.runs_deleted >= 1


def test_a_dry_run_counts_the_same_and_deletes_nothing(engine: sa.Engine, storage: Storage) -> None:
    world = build(engine, storage)
    before = {label: world.stored(label) for label in world.ids}
    dry = sweep(engine, storage, now=NOW, retention=RETENTION, dry_run=True)
    assert world.remaining() == set(world.ids)
    assert {label: world.stored(label) for label in world.ids} == before
    real = sweep(engine, storage, now=NOW, retention=RETENTION)
    assert dry.dry_run
    assert dry.batches == 0
    assert (dry.runs_deleted, dry.files_deleted, dry.bytes_freed) == (
        real.runs_deleted,
        real.files_deleted,
        real.bytes_freed,
    )
    assert dry.kept == real.kept
    assert real.kept["latest"] >= 5
    assert real.kept["collected"] == 2


class FailingStorage(LocalStorage):
    """Local storage whose listing or deleting fails, as an unreachable S3 would."""

    fail: str = ""

    def list_sizes(self, prefix: str) -> dict[str, int]:
        if self.fail == "list":
            raise OSError("storage unreachable")
        return super().list_sizes(prefix)

    def delete_keys(self, keys: Any) -> None:
        if self.fail == "delete":
            raise StorageError("could not delete 3 objects, e.g. runs/1/index.json: AccessDenied")
        super().delete_keys(keys)


def test_a_storage_error_while_listing_keeps_the_rows_and_files(engine: sa.Engine, tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path / "failing")
    world = build(engine, storage)
    storage.fail = "list"
    with pytest.raises(SweepError) as caught:
        sweep(engine, storage, now=NOW, retention=RETENTION)
    message = str(caught.value)
    assert message.startswith(f"Housekeeping stopped: could not list the files of run {world.ids['oldest']} ")
    assert "OSError: storage unreachable. No row or file of this batch was deleted" in message
    assert world.remaining() == set(world.ids)
    assert world.stored("oldest")


def test_a_storage_error_while_deleting_names_the_orphaned_folders(engine: sa.Engine, tmp_path: Path) -> None:
    storage = FailingStorage(tmp_path / "failing")
    world = build(engine, storage)
    storage.fail = "delete"
    with pytest.raises(SweepError) as caught:
        sweep(engine, storage, now=NOW, retention=RETENTION, batch_size=2)
    message = str(caught.value)
    first, second = world.ids["oldest"], world.ids["older"]
    assert f"the rows of runs {first}…{second} (2 runs) were deleted" in message
    assert "StorageError: could not delete 3 objects" in message
    assert message.endswith(f"runs/{first}/, runs/{second}/")
    # Rows first: never a row whose files are gone. The files stay as orphans; the rest of the sweep did not run.
    assert world.remaining() == set(world.ids) - {"oldest", "older"}
    assert world.stored("oldest")
    assert world.stored("older")
    assert caught.value.result.runs_deleted == 2


@pytest.mark.integration
def test_an_s3_error_stops_the_sweep_before_any_row_goes(
    tmp_path: Path, s3_bucket: str, sqlite_template: Path
) -> None:
    path = tmp_path / "machine.db"
    path.write_bytes(sqlite_template.read_bytes())
    engine = make_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
    try:
        storage = open_storage(f"s3://{s3_bucket}/machine")
        world = build(engine, storage)
        gone = open_storage(f"s3://{s3_bucket}-missing/machine")
        with pytest.raises(SweepError, match=r"could not list the files of run \d+ .*NoSuchBucket"):
            sweep(engine, gone, now=NOW, retention=RETENTION)
        assert world.remaining() == set(world.ids)
    finally:
        engine.dispose()


@pytest.mark.parametrize("retention", [dt.timedelta(0), dt.timedelta(days=-1)])
def test_a_retention_that_is_not_positive_is_refused(tmp_path: Path, retention: dt.timedelta) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(ValueError, match="the retention must be positive"):
            sweep(engine, open_storage(tmp_path / "s"), now=NOW, retention=retention)
    finally:
        engine.dispose()


def test_the_command_sweeps_and_its_dry_run_deletes_nothing(
    tmp_path: Path, sqlite_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "machine.db"
    path.write_bytes(sqlite_template.read_bytes())
    engine = make_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
    storage = open_storage(tmp_path / "storage")
    try:
        world = build(engine, storage)
        # The command sweeps at the real now: every run of the world is days older than at NOW.
        args = ["housekeeping", "--database", f"sqlite:///{path}", "--storage", str(tmp_path / "storage")]
        assert main([*args, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Dry run: would delete ")
        assert world.remaining() == set(world.ids)
        assert main([*args, "--retention-days", "90"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Deleted ")
        assert "oldest" not in world.remaining()
        assert "only-old" in world.remaining()
        assert main([*args, "--retention-days", "0"]) == 2
        assert "--retention-days must be at least 1" in capsys.readouterr().err
    finally:
        engine.dispose()


def test_the_command_needs_a_database_and_a_storage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENADDR_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPENADDR_RESULTS", raising=False)
    assert main(["housekeeping"]) == 2
    assert "housekeeping needs --database (or OPENADDR_DATABASE_URL)" in capsys.readouterr().err
