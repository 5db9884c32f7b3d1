"""The ``openaddr_housekeeping`` DAG's task body, as a worker runs it: the Machine database, the storage and the
retention found through the connection, the variable and ``OPENADDR_RETENTION_DAYS``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from openaddr.db.runs import utcnow
from openaddr.db.schema import runs
from openaddr.storage import open_storage

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag

    from tests.airflow_fixtures import Machine


def test_the_task_sweeps_with_the_configured_retention(
    machine: Machine, machine_dags: DagBag, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(machine.storage)
    now = utcnow()
    ids = {}
    with machine.engine.begin() as connection:
        for label, days in (("old", 40), ("newer", 20), ("recent", 1)):
            ids[label] = connection.execute(
                sa.insert(runs)
                .values(
                    source_path="sources/us/ca/a.json",
                    source_layer="addresses",
                    layer_name="city",
                    datetime_tz=now - dt.timedelta(days=days),
                    status=True,
                    is_merged=True,
                    message="Everything is fine",
                )
                .returning(runs.c.id)
            ).scalar_one()
            storage.put_bytes(b"{}", f"runs/{ids[label]}/index.json")
    monkeypatch.setenv("OPENADDR_RETENTION_DAYS", "30")
    task = machine_dags.dags["openaddr_housekeeping"].get_task("sweep_runs")
    counts = task.python_callable()
    assert counts["runs_deleted"] == 1
    assert counts["files_deleted"] == 1
    assert counts["bytes_freed"] == 2
    assert counts["dry_run"] is False
    with machine.engine.connect() as connection:
        left = set(connection.execute(sa.select(runs.c.id)).scalars())
    assert left == {ids["newer"], ids["recent"]}
    assert storage.list_keys(f"runs/{ids['old']}") == []
    monkeypatch.setenv("OPENADDR_RETENTION_DAYS", "0")
    from openaddr_airflow.config import InvalidConfiguration

    with pytest.raises(InvalidConfiguration, match="OPENADDR_RETENTION_DAYS='0'"):
        task.python_callable()
