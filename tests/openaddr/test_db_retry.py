"""The Machine database's outage handling (:mod:`openaddr.db.retry`, issue 16 fault d) as plain Python: which
errors are an outage, how a step rides one out, and ``process_source`` recording one run across an outage.

The errors are real ones: a refused connection, a connection reset by :class:`~tests.tcp_proxy.TCPProxy` in front
of the real PostgreSQL, an integrity error and a bad query from that server. No time is asserted: the budgets
here are small, and the tests count tries.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from devstack.procs import free_port
from openaddr import machine
from openaddr.db import make_engine, runs as db_runs, upgrade
from openaddr.db.retry import DatabaseUnavailable, Retry, budget_seconds, transient
from openaddr.storage import LocalStorage
from tests.db_fixtures import create_database, drop_database
from tests.openaddr.test_machine import PARK_PATH, ci_conf, park_document, plan, serve_park, source_item, ti
from tests.tcp_proxy import TCPProxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.servers import LoopbackHTTPServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url(postgres_admin_url: sa.URL) -> Iterator[sa.URL]:
    """A migrated PostgreSQL database of this module's own (the steps here commit)."""
    url = create_database(postgres_admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture
def proxy(database_url: sa.URL) -> Iterator[TCPProxy]:
    with TCPProxy((database_url.host or "127.0.0.1", database_url.port or 5432)) as running:
        yield running


@pytest.fixture
def proxied(proxy: TCPProxy, database_url: sa.URL) -> Iterator[sa.Engine]:
    """The Machine's engine on the database through the proxy (pre-ping on, as in the tasks)."""
    engine = make_engine(database_url.set(host="127.0.0.1", port=proxy.port))
    yield engine
    engine.dispose()


def raised(step: Callable[[], Any]) -> BaseException:
    """The exception ``step`` raises (the tests then say what it must be)."""
    try:
        step()
    except Exception as error:
        return error
    pytest.fail(f"{step} raised nothing")


def counting(step: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return step(*args, **kwargs)

    counted.__name__ = getattr(step, "__name__", "step")
    return counted, calls


# -- what an outage is ------------------------------------------------------------------------------------------


def test_a_refused_connection_is_transient(database_url: sa.URL) -> None:
    engine = make_engine(database_url.set(port=free_port()))
    try:
        error = raised(lambda: db_runs.get_run(engine, 1))
    finally:
        engine.dispose()
    assert isinstance(error, sa.exc.OperationalError)
    assert transient(error)


def test_a_connection_reset_in_use_is_transient(proxy: TCPProxy, proxied: sa.Engine) -> None:
    with proxied.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert proxy.cut() >= 1
        error = raised(lambda: connection.exec_driver_sql("SELECT 1"))
    assert isinstance(error, sa.exc.DBAPIError)
    assert error.connection_invalidated
    assert transient(error)


def test_bugs_and_bad_data_are_not_transient(proxied: sa.Engine) -> None:
    integrity = raised(
        lambda: db_runs.insert_run(
            proxied,
            source_path="sources/x.json",
            source_layer="addresses",
            layer_name="a",
            job_id="no-such-job",
        )
    )
    assert isinstance(integrity, sa.exc.IntegrityError)
    with proxied.connect() as connection:
        programming = raised(lambda: connection.exec_driver_sql("SELECT nothing FROM nowhere"))
    assert isinstance(programming, sa.exc.ProgrammingError)
    missing = raised(lambda: db_runs.finish_run(proxied, 10**9, state=None, attempt_started=db_runs.utcnow()))
    assert isinstance(missing, LookupError)
    for error in (integrity, programming, missing, ValueError("x"), OSError("disk full")):
        assert not transient(error), error


def test_on_sqlite_a_busy_file_is_transient_and_a_missing_table_is_not(tmp_path: Path) -> None:
    path = tmp_path / "machine.db"
    upgrade(sa.make_url(f"sqlite:///{path}"))
    holder = make_engine(f"sqlite:///{path}")
    waiting = make_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    try:
        with holder.begin():  # BEGIN IMMEDIATE: the write lock, held
            locked = raised(lambda: db_runs.get_run(waiting, 1))
        assert isinstance(locked, sa.exc.OperationalError)
        assert "locked" in str(locked)
        assert transient(locked)
        with waiting.connect() as connection:
            missing = raised(lambda: connection.exec_driver_sql("SELECT * FROM nowhere"))
        assert isinstance(missing, sa.exc.OperationalError)
        assert not transient(missing)
    finally:
        holder.dispose()
        waiting.dispose()


# -- riding one out ---------------------------------------------------------------------------------------------


def test_a_step_waits_out_an_outage_and_records_once(proxy: TCPProxy, proxied: sa.Engine) -> None:
    task = db_runs.AirflowTask("openaddr_batch", "faults-retry", "process_source", 0, 1)
    key = {"source_path": "sources/retry.json", "source_layer": "addresses", "layer_name": "primary"}
    proxy.cut()
    threading.Timer(1.0, proxy.restore).start()
    insert, calls = counting(db_runs.insert_run)

    run_id = Retry(30, first_wait=0.1, max_wait=0.3)(insert, proxied, **key, task=task)

    assert len(calls) > 1, "the outage did not reach the step"
    # A second attempt of the same task instance finds its run: one run per task instance, whatever was retried.
    assert Retry(30)(db_runs.insert_run, proxied, **key, task=task) == run_id
    assert [run["id"] for run in db_runs.task_runs(proxied, task)] == [run_id]


def test_a_step_gives_up_after_its_budget(proxy: TCPProxy, proxied: sa.Engine) -> None:
    proxy.cut()
    step, calls = counting(db_runs.get_run)
    error = raised(lambda: Retry(0.5, first_wait=0.05, max_wait=0.1)(step, proxied, 1))
    assert isinstance(error, DatabaseUnavailable)
    assert isinstance(error.__cause__, sa.exc.OperationalError)
    assert f"did not answer get_run for 0 s ({len(calls)} tries)" in str(error)
    assert len(calls) > 1


def test_a_budget_of_zero_is_one_try(proxy: TCPProxy, proxied: sa.Engine) -> None:
    proxy.cut()
    step, calls = counting(db_runs.get_run)
    assert isinstance(raised(lambda: Retry(0)(step, proxied, 1)), DatabaseUnavailable)
    assert len(calls) == 1


def test_a_bug_is_raised_at_once(proxied: sa.Engine) -> None:
    step, calls = counting(db_runs.finish_run)
    error = raised(lambda: Retry(30)(step, proxied, 10**9, state=None, attempt_started=db_runs.utcnow()))
    assert isinstance(error, LookupError)
    assert len(calls) == 1


def test_the_budget_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENADDR_DATABASE_RETRY_SECONDS", raising=False)
    assert budget_seconds() == 300.0
    monkeypatch.setenv("OPENADDR_DATABASE_RETRY_SECONDS", "40")
    assert budget_seconds() == 40.0


# -- process_source across an outage ----------------------------------------------------------------------------


class CuttingStorage(LocalStorage):
    """Run storage that cuts the database path as the run is published: the run's result is then recorded while
    the database is away (the case that would cost a task its whole processing)."""

    def __init__(self, root: Path, proxy: TCPProxy, outage: float) -> None:
        super().__init__(root)
        self.proxy = proxy
        self.outage = outage

    def publish_run(self, *args: Any, **kwargs: Any) -> Any:
        urls = super().publish_run(*args, **kwargs)
        self.proxy.cut()
        threading.Timer(self.outage, self.proxy.restore).start()
        return urls


def test_process_source_records_its_run_once_across_an_outage(
    proxy: TCPProxy,
    proxied: sa.Engine,
    tmp_path: Path,
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    allow_private_urls: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OPENADDR_DATABASE_RETRY_SECONDS", "60")
    caplog.set_level(logging.WARNING, logger="openaddr.db.retry")
    storage = LocalStorage(tmp_path / "storage")
    route, url = serve_park(http_server, fixtures, "db-retry")
    job_id = "job-db-retry"
    content = json.dumps(park_document(fixtures, url), indent=4)
    [argument] = plan(proxied, storage, ci_conf(job_id, source_item(PARK_PATH, content, "blob-park")))
    cutting = CuttingStorage(tmp_path / "storage", proxy, outage=2.0)
    accepted = proxy.accepted

    result = machine.process_source(
        proxied,
        cutting,
        argument["entry"],
        machine.RunOwner(**argument["run_owner"]),
        scratch=tmp_path / "scratch",
        task=ti(job_id),
    )

    waits = [r.getMessage() for r in caplog.records if r.name == "openaddr.db.retry"]
    assert waits, "the outage did not reach the recording"
    assert proxy.accepted > accepted
    assert result["status"] is True, result
    (run,) = db_runs.job_runs(proxied, job_id)
    assert (run["id"], run["status"], run["message"]) == (result["run_id"], True, db_runs.OK_MESSAGE)
    assert http_server.hits[route] == 1, "the source was processed once"
