"""Where the tasks find the Machine database: the ``openaddr_machine_db`` connection, extras included."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import sqlalchemy as sa

from openaddr_airflow import config

if TYPE_CHECKING:
    import pytest


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
