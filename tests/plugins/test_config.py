"""Where the tasks find the Machine database and storage: the ``openaddr_machine_db`` connection, extras included;
no silent local fallback outside the embedded mode."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.db import make_engine, upgrade
from openaddr.db.schema import jobs, runs
from openaddr.machine import PlannedEntry, RunOwner
from openaddr_airflow import config
from tests.conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path


def test_postgres_connection_keeps_libpq_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "port": 5432,
                "login": "machine",
                "password": "s3cret",
                "schema": "openaddr",
                "extra": {"sslmode": "require", "cursor": "dictcursor"},
            }
        ),
    )
    url = sa.make_url(config.machine_database_url())
    assert (url.host, url.database, url.username, url.password) == (
        "db.internal",
        "openaddr",
        "machine",
        "s3cret",
    )
    assert dict(url.query) == {"sslmode": "require"}


def test_sqlite_connection_names_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = tmp_path / "machine.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    assert config.machine_database_url() == f"sqlite:///{path}"


@pytest.fixture(scope="module")
def unconfigured_dag(airflow_metadata: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "tests" / "dags" / "listener_dags.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["machine_unconfigured"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("AIRFLOW_CONN_OPENADDR_MACHINE_DB", "OPENADDR_DATABASE_URL"), "connection openaddr_machine_db"),
        (("AIRFLOW_VAR_OPENADDR_RESULTS", "OPENADDR_RESULTS"), "variable openaddr_results"),
    ],
)
def test_worker_without_its_configuration_fails_the_task_and_writes_nothing(
    unconfigured_dag: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    missing: tuple[str, ...],
    named: str,
) -> None:
    home, storage, database = tmp_path / "home", tmp_path / "storage", tmp_path / "db" / "machine.db"
    upgrade(f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENADDR_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS", str(storage))
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    monkeypatch.setenv("OPENADDR_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv(config.EMBEDDED_VARIABLE, raising=False)
    for name in missing:
        monkeypatch.delenv(name, raising=False)
    entry = PlannedEntry(
        path="sources/us-wy-park.json",
        layer="addresses",
        name="primary",
        source_key="jobs/unconfigured/sources/us-wy-park.json",
        blob_sha=None,
        digest="0" * 40,
        timeout=60.0,
    )
    owner = RunOwner("ci", job_id="unconfigured")

    dag_run = unconfigured_dag.test(run_conf={"entry": entry.to_dict(), "run_owner": vars(owner)})

    (ti,) = dag_run.get_task_instances()
    assert (dag_run.state, ti.state, ti.try_number) == ("failed", "failed", 1)  # no retry
    assert (
        f"The {'Machine database' if 'conn' in named else 'run storage'} is not configured: {named}"
        in caplog.text
    )
    # Nothing written: no local database, no storage, no run in the configured database.
    assert not storage.exists()
    assert not home.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db"]
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
            assert connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 0
    finally:
        engine.dispose()
