"""The production-shape Celery stack of the slow integration tests (airflow.md, "Production shape"), built one way.

Loaded by ``tests/conftest.py``. :func:`stack_databases` makes Airflow's metadata database and the Machine database
on the real PostgreSQL; :func:`celery_stack` runs a :class:`~devstack.stack.Stack` with ``executor="celery"`` on them
from a clean environment; the ``redis_url`` fixture (module scope) gives a module a Redis database index of its own
for the broker. A module keeps its scenario (what it triggers, breaks and measures) to itself.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import pytest

from devstack.procs import free_port
from tests.db_fixtures import create_database, drop_database

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

    import sqlalchemy as sa

    from devstack.stack import Stack
    from tests.github_server import FakeGitHub

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Marks the Redis database index a module took, so that a concurrent run picks another one.
REDIS_CLAIM = "openaddr-test:claimed-by"


class StackDatabases(NamedTuple):
    """Airflow's metadata database and the Machine database of one stack."""

    metadata_url: sa.URL
    machine_url: sa.URL


@dataclass
class CeleryStack:
    """A started stack; :attr:`stop_seconds` is filled in once it has stopped."""

    stack: Stack
    stop_seconds: float = math.nan


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the Airflow and Machine settings ``conftest.py`` made for in-process tests: the stack inherits
    this process's environment and must build everything itself, as from a fresh shell (``conftest.py``'s
    ``DAGS_ARE_PAUSED_AT_CREATION=False`` would, for one, start scheduled batch runs beside ours)."""
    for key in list(os.environ):
        if key.startswith(("AIRFLOW", "OPENADDR")):
            monkeypatch.delenv(key)


@contextmanager
def stack_databases(admin_url: sa.URL) -> Iterator[StackDatabases]:
    """Two fresh PostgreSQL databases, dropped on exit (a module's tests may read them after its stack stopped)."""
    metadata_url = create_database(admin_url)
    try:
        machine_url = create_database(admin_url)
        try:
            yield StackDatabases(metadata_url, machine_url)
        finally:
            drop_database(admin_url, machine_url)
    finally:
        drop_database(admin_url, metadata_url)


@contextmanager
def celery_stack(
    home: Path,
    databases: StackDatabases,
    *,
    dag_id: str,
    broker_url: str,
    worker_concurrency: int,
    start_timeout: float,
    celery_workers: int = 1,
    github: FakeGitHub | None = None,
    env: Mapping[str, str] | None = None,
    machine_database_url: sa.URL | None = None,
) -> Iterator[CeleryStack]:
    """Build the Celery stack for ``dag_id`` in ``home`` on a free port, start it, yield it, stop it (timed).

    The environment is cleaned (:func:`clean_environment`) while the stack is built, runs and stops.

    :param github: the fake GitHub of an ``openaddr_ci`` run, reset before and after; the stack gets the
        ``github_openaddresses`` connection to it, the results site's address and all of loopback as an allowed
        private network (the fixture data's server).
    :param env: the module's own settings, on top of those.
    :param machine_database_url: where the stack reaches the Machine database, when not directly (a proxy);
        ``databases.machine_url`` by default.
    """
    # Here, not at the top: every test session loads this module (``conftest.py``), few start a stack.
    from devstack.stack import Stack

    common: dict[str, str] = {}
    if github is not None:
        github.reset()
        common = {
            "AIRFLOW_CONN_GITHUB_OPENADDRESSES": json.dumps(
                {"conn_type": "github", "host": github.base_url, "password": "ci-token"}
            ),
            "AIRFLOW_VAR_OPENADDR_BASE_URL": "http://results.test",
            "OPENADDR_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        }
    machine_url = machine_database_url or databases.machine_url
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            clean_environment(monkeypatch)
            stack = Stack(
                home,
                free_port(),
                env={**common, **(env or {})},
                dag_ids=(dag_id,),
                executor="celery",
                metadata_url=databases.metadata_url.render_as_string(hide_password=False),
                machine_database_url=machine_url.render_as_string(hide_password=False),
                broker_url=broker_url,
                worker_concurrency=worker_concurrency,
                celery_workers=celery_workers,
            )
            running = CeleryStack(stack)
            try:
                stack.start(timeout=start_timeout)
                yield running
            finally:
                stopping = time.monotonic()
                stack.stop()
                running.stop_seconds = time.monotonic() - stopping
    finally:
        if github is not None:
            github.reset()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis database index of this module's own (1–15, claimed with SETNX), flushed before and after."""
    import redis

    token = secrets.token_hex(8)
    client = None
    try:
        for index in range(15, 0, -1):
            candidate = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=index)
            if candidate.dbsize() == 0 and candidate.set(REDIS_CLAIM, token, nx=True):
                client = candidate
                break
            candidate.close()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {error}", pytrace=False)
    if client is None:
        pytest.fail("no empty Redis database index among 1–15", pytrace=False)
    index = client.connection_pool.connection_kwargs["db"]
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{index}"
    finally:
        client.flushdb()
        client.close()
