"""Fixtures for running the Machine's DAGs in-process with ``dag.test()`` (loaded by ``tests/conftest.py``).

Airflow's metadata database is a throwaway SQLite file (``tests/conftest.py`` points Airflow at it), created once
per session. The Machine database is a fresh one per test on each backend (SQLite and the real PostgreSQL), and the
tasks find it, the storage folder and GitHub exactly as in production: through the ``openaddr_machine_db``
connection, the ``openaddr_results`` variable and the ``github_openaddresses`` connection, given as ``AIRFLOW_CONN_*``
and ``AIRFLOW_VAR_*`` environment variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from openaddr.db import make_engine, upgrade
from tests.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from airflow.dag_processing.dagbag import DagBag

    from tests.github_server import FakeGitHub


@pytest.fixture(scope="session")
def airflow_metadata() -> None:
    """Airflow's metadata schema, created once (about 4 s)."""
    from airflow.utils import db as airflow_db

    airflow_db.resetdb()


@pytest.fixture(scope="session")
def machine_dags(airflow_metadata: None) -> DagBag:
    """The project's DAGs, parsed once."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@dataclass
class Machine:
    """What the tasks of one test see: the Machine database and the storage folder."""

    engine: sa.Engine
    storage: Path
    base_url: str


def connection_json(url: sa.URL) -> str:
    """``openaddr_machine_db`` in Airflow's JSON connection form."""
    if url.get_backend_name() == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": url.database})
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": url.host,
            "port": url.port or 5432,
            "login": url.username,
            "password": url.password or "",
            "schema": url.database,
        }
    )


@pytest.fixture
def machine(
    empty_db_url: sa.URL,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_github: FakeGitHub,
    airflow_metadata: None,
) -> Iterator[Machine]:
    """A migrated Machine database on each backend, a storage folder, GitHub on loopback, loopback data allowed."""

    upgrade(empty_db_url)
    storage = tmp_path / "storage"
    monkeypatch.setenv("AIRFLOW_CONN_OPENADDR_MACHINE_DB", connection_json(empty_db_url))
    monkeypatch.setenv(
        "AIRFLOW_CONN_GITHUB_OPENADDRESSES",
        json.dumps({"conn_type": "github", "host": fake_github.base_url, "password": "ci-token"}),
    )
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS", str(storage))
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_BASE_URL", "http://results.test")
    monkeypatch.setenv("OPENADDR_ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("OPENADDR_SCRATCH", str(tmp_path / "scratch"))
    engine = make_engine(empty_db_url)
    try:
        yield Machine(engine, storage, "http://results.test")
    finally:
        engine.dispose()
