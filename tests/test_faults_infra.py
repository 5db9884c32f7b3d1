"""Issue 16, part 4, faults (c) and (d), for real: the Celery stack loses its broker, then its Machine database,
in the middle of a batch set, and the set still completes with every entry recorded exactly once.

One module-scoped stack (:class:`~devstack.stack.Stack`, ``executor="celery"``, one worker of 2 slots): Airflow's
metadata in a PostgreSQL database of its own; the broker a ``redis-server`` this module starts on a free port
(``--save '' --appendonly no``: no persistence, so a restart loses every message in it, as an ElastiCache node
replacement does); the Machine database a PostgreSQL database of its own reached through :class:`TCPProxy`, which
the test cuts. Five copies of the Park County fixture source, each with its data dripped over ~8 s from the
loopback HTTP server (a ``HEAD`` answers 405, so nothing estimates them small and each entry is a task of its
own), make the set slow enough for a fault to land mid-set.

* **(c) broker restarted**: once two entries run and one more waits in Redis, Redis is killed (SIGKILL) and
  started again on the same port once the scheduler has tried to hand it the next entry (an entry ended
  meanwhile), at most :data:`BROKER_DOWN_SECONDS` later. The message that waited is lost with it; the
  scheduler requeues its task after ``task_queued_timeout``. A task the scheduler hands over while Redis is down is
  kept and published again (``airflow.cfg``: ``[celery] extra_celery_config``, ``task_publish_max_retries``), never
  failed for it.
* **(d) Machine database unreachable**: in a second set (the sources changed, so nothing is reused), once runs are
  in progress, the proxy resets every connection and refuses new ones for :data:`DB_OUTAGE_SECONDS`.

Timings shortened **in this test only**, by configuration (:data:`TEST_TIMINGS`): Airflow's retry delay capped
at 10 s (``[core] max_task_retry_delay``; in production the first retry waits 15–30 s, the second 150–300 s), a
task stuck in *queued* requeued after 60 s (``[scheduler] task_queued_timeout``; production 1800 s), and a task's
in-process retry of the Machine database 40 s (``OPENADDR_DATABASE_RETRY_SECONDS``; production 300 s), shorter
than the outage so that both the in-process retry and Airflow's retry are exercised. ``pytest -s`` prints the recovery times; nothing asserts one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

from devstack.procs import free_port
from devstack.stack import POOL, Stack
from tests.celery_stack import celery_stack, stack_databases
from tests.dags.test_dag_runs import park_points
from tests.tcp_proxy import TCPProxy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.servers import LoopbackHTTPServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "openaddr_batch"
SOURCES = 5
#: Seconds over which each source's data is dripped.
DOWNLOAD_SECONDS = 8.0
#: Redis stays down until the scheduler has tried to hand it a task (an entry ends and the next one is queued
#: meanwhile), at most this long.
BROKER_DOWN_SECONDS = 90.0
DB_OUTAGE_SECONDS = 60.0
WORKER_CONCURRENCY = 2
#: ``oa_sources`` slots: the batch may have POOL_SLOTS - 2 = 3 entries active, one more than the worker runs, so
#: that a message waits in Redis.
POOL_SLOTS = 5
START_TIMEOUT = 180.0
SET_TIMEOUT = 420.0
TEST_TIMINGS = {
    "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "10",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
    "OPENADDR_DATABASE_RETRY_SECONDS": "40",
}
PROCESS_TASKS = ("process_source", "process_released_source")
#: What the scheduler logs when a publish timed out and it keeps the task for its next loop.
PUBLISH_RETRY = "Celery Task Timeout Error for Workload"


class RedisServer:
    """A ``redis-server`` of this module's own on ``port``, without persistence; killed and started again."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = (self.folder / f"redis-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None

    def queued(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu's Redis list of that name)."""
        import redis

        with contextlib.closing(redis.Redis(host="127.0.0.1", port=self.port)) as client:
            return int(client.llen(queue))


def _drip_route(server: LoopbackHTTPServer, body: bytes) -> Any:
    """``GET``: ``body`` in 24 pieces over :data:`DOWNLOAD_SECONDS`; ``HEAD``: 405 (no size to estimate from)."""
    chunk = max(1, -(-len(body) // 24))
    delay = DOWNLOAD_SECONDS / 24

    def route(handler: Any, query: dict[str, str]) -> None:
        if handler.command == "HEAD":
            handler.send_response(405)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for start in range(0, len(body), chunk):
                if server.stop.wait(delay):
                    return
                handler.wfile.write(body[start : start + chunk])
                handler.wfile.flush()
        except OSError:
            return

    return route


def _write_sources(checkout: Path, fixtures: Path, server: LoopbackHTTPServer, night: int) -> list[str]:
    """Five copies of Park County under ``sources/faults/night-<night>/``, each with a dripped data URL of its own and a note
    naming the night (so the second night's entries are new, not reused); return their paths."""
    body = (fixtures / "data" / "us-wy-park.zip").read_bytes()
    shutil.rmtree(
        checkout / "sources" / "faults", ignore_errors=True
    )  # the set lists this night's files only
    document = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    paths = []
    for number in range(1, SOURCES + 1):
        # A path of each night's own: the second night's entries have no previous times, so none is grouped.
        path = f"sources/faults/night-{night}/park-{number}.json"
        url = server.add_route(f"/faults/{night}/park-{number}.zip", _drip_route(server, body))
        target = checkout / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({**document, "data": url, "note": f"night {night}"}, indent=4))
        paths.append(path)
    return paths


def _task_instances(stack: Stack, run_id: str, tries: int = 1) -> list[dict[str, Any]]:
    """The run's task instances (asked up to ``tries`` times: the api-server may not answer in time under load)."""
    for attempt in range(tries):
        try:
            answer = stack.request(
                "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
            )
            return list(answer.json()["task_instances"])
        except requests.RequestException:
            if attempt + 1 == tries:
                raise
    return []


def _states(stack: Stack, run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ti in _task_instances(stack, run_id):
        if ti["task_id"] in PROCESS_TASKS:
            counts[str(ti["state"])] = counts.get(str(ti["state"]), 0) + 1
    return counts


def _wait_for(what: str, predicate: Any, stack: Stack, timeout: float, poll: float = 0.5) -> float:
    """Poll ``predicate`` until it holds; an answer of the api-server lost under load counts as not yet."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic()
        except requests.RequestException:
            pass
        stack.check_alive()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(poll)


def _wait_end(stack: Stack, run_id: str) -> str:
    state = ""

    def ended() -> bool:
        nonlocal state
        state = stack.state(DAG_ID, run_id)
        return state in ("success", "failed")

    _wait_for(f"{DAG_ID} run {run_id}", ended, stack, SET_TIMEOUT, poll=1.0)
    return state


def _outcome(stack: Stack, machine: sa.Engine, run_id: str) -> dict[str, Any]:
    """What the set left: its runs, its set row, its task instances' tries, what the task logs said."""
    with machine.connect() as connection:
        runs = [
            dict(row._mapping)
            for row in connection.execute(
                sa.text(
                    "SELECT id, source_path, status, message, address_count, airflow_task_id, airflow_try_number "
                    "FROM runs WHERE airflow_dag_run_id = :run_id ORDER BY id"
                ),
                {"run_id": run_id},
            )
        ]
        sets = [
            dict(row._mapping)
            for row in connection.execute(
                sa.text("SELECT id, datetime_end FROM sets WHERE airflow_dag_run_id = :run_id"),
                {"run_id": run_id},
            )
        ]
    tis = _task_instances(stack, run_id, tries=5)
    logs = [
        path.read_text(errors="replace")
        for path in (stack.logs / f"dag_id={DAG_ID}" / f"run_id={run_id}").rglob("*.log")
    ]
    return {
        "runs": runs,
        "sets": sets,
        "tries": {
            f"{ti['task_id']}[{ti['map_index']}]": (ti["state"], ti["try_number"])
            for ti in tis
            if ti["task_id"] != "process_large_source"
        },
        "db_waits": sum(log.count("The Machine database did not answer") for log in logs),
        "db_unavailable": sum(log.count("DatabaseUnavailable") for log in logs),
    }


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_admin_url: sa.URL,
    http_server: LoopbackHTTPServer,
    fixtures: Path,
) -> Iterator[dict[str, Any]]:
    """Start the stack, run set 1 with the broker restarted and set 2 with the Machine database cut; stop."""
    folder = tmp_path_factory.mktemp("faults")
    with stack_databases(postgres_admin_url) as databases:
        machine_url = databases.machine_url
        redis_server = RedisServer(free_port(), folder / "redis")
        proxy = TCPProxy((machine_url.host or "127.0.0.1", machine_url.port or 5432))
        proxied = machine_url.set(host="127.0.0.1", port=proxy.port)
        machine = sa.create_engine(machine_url, poolclass=sa.NullPool)
        checkout = folder / "checkout"
        result: dict[str, Any] = {"expected": park_points(fixtures)}
        began = time.monotonic()
        try:
            redis_server.start()
            result["paths_1"] = _write_sources(checkout, fixtures, http_server, 1)
            with celery_stack(
                folder / "var",
                databases,
                dag_id=DAG_ID,
                broker_url=redis_server.url,
                worker_concurrency=WORKER_CONCURRENCY,
                start_timeout=START_TIMEOUT,
                env={
                    "AIRFLOW_VAR_OPENADDR_SOURCES": str(checkout),
                    "OPENADDR_POOL_SLOTS": str(POOL_SLOTS),
                    "OPENADDR_WORKERS": "0",
                    **TEST_TIMINGS,
                },
                machine_database_url=proxied,
            ) as running:
                stack = result["stack"] = running.stack
                stack.set_pool(POOL, POOL_SLOTS, "faults test: more batch slots than the worker has")
                result["started"] = time.monotonic() - began
                result["broker"] = _broker_restart(stack, redis_server, machine)
                result["paths_2"] = _write_sources(checkout, fixtures, http_server, 2)
                result["database"] = _database_outage(stack, proxy, machine)
            result["stop_seconds"] = running.stop_seconds
            result["module_seconds"] = time.monotonic() - began
            _report(result)
            yield result
        finally:
            machine.dispose()
            proxy.close()
            redis_server.kill()


def _broker_restart(stack: Stack, redis_server: RedisServer, machine: sa.Engine) -> dict[str, Any]:
    """Fault (c): the scheduled set of the unpaused DAG; Redis killed while entries run and more wait in it."""
    stack.unpause(DAG_ID)
    run_id = ""

    def scheduled() -> bool:
        nonlocal run_id
        runs = stack.request("GET", f"/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
        run_id = runs[0]["dag_run_id"] if runs else ""
        return bool(run_id)

    _wait_for("the scheduled batch run", scheduled, stack, 60)
    began = time.monotonic()
    _wait_for(
        "two entries running and one waiting in Redis",
        lambda: (
            _states(stack, run_id).get("running", 0) >= WORKER_CONCURRENCY
            and redis_server.queued("batch") >= 1
        ),
        stack,
        SET_TIMEOUT,
    )
    before = {"states": _states(stack, run_id), "in_redis": redis_server.queued("batch")}
    scheduler_log = stack.logs / "scheduler.log"
    published_before = scheduler_log.read_text(errors="replace").count(PUBLISH_RETRY)
    killed = time.monotonic()
    redis_server.kill(signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        _wait_for(
            "the scheduler trying to publish to the broker that is down",
            lambda: scheduler_log.read_text(errors="replace").count(PUBLISH_RETRY) > published_before,
            stack,
            BROKER_DOWN_SECONDS,
        )
    redis_server.start()
    restarted = time.monotonic()
    reconnected = _wait_for("the worker back on the broker", stack.worker_ready, stack, 120, poll=0.2)
    state = _wait_end(stack, run_id)
    ended = time.monotonic()
    scheduler = (stack.logs / "scheduler.log").read_text(errors="replace")
    return {
        "run_id": run_id,
        "state": state,
        "before": before,
        # The scheduler failed a task because it could not hand it to the broker.
        "publish_errors": scheduler.count("Error sending Celery workload"),
        "publish_retries": scheduler.count(PUBLISH_RETRY),
        "requeued": scheduler.count("Task stuck in queued; will try to requeue"),
        "set_seconds": ended - began,
        "down_seconds": restarted - killed,
        "worker_back_seconds": reconnected - restarted,
        "recovered_seconds": ended - restarted,
        **_outcome(stack, machine, run_id),
    }


def _database_outage(stack: Stack, proxy: TCPProxy, machine: sa.Engine) -> dict[str, Any]:
    """Fault (d): a triggered set; the Machine database cut for a minute once runs are in progress."""
    run_id = stack.trigger(DAG_ID, run_id=f"faults-db-{int(time.time())}")
    began = time.monotonic()

    def in_progress() -> bool:
        with machine.connect() as connection:
            pending = connection.execute(
                sa.text("SELECT count(*) FROM runs WHERE airflow_dag_run_id = :r AND status IS NULL"),
                {"r": run_id},
            ).scalar_one()
        return bool(pending) and _states(stack, run_id).get("running", 0) >= 1

    _wait_for("runs in progress", in_progress, stack, SET_TIMEOUT)
    before = _states(stack, run_id)
    cut = time.monotonic()
    connections = proxy.cut()
    time.sleep(DB_OUTAGE_SECONDS)
    proxy.restore()
    restored = time.monotonic()
    state = _wait_end(stack, run_id)
    ended = time.monotonic()
    return {
        "run_id": run_id,
        "state": state,
        "before": before,
        "connections_cut": connections,
        "set_seconds": ended - began,
        "down_seconds": restored - cut,
        "recovered_seconds": ended - restored,
        **_outcome(stack, machine, run_id),
    }


def _report(result: dict[str, Any]) -> None:
    """Recovery times on stderr (``pytest -s``)."""
    lines = [f"faults (c, d): stack ready after {result.get('started', float('nan')):.0f} s"]
    for name in ("broker", "database"):
        fault = result.get(name)
        if not fault:
            continue
        retried = {key: tries for key, (_, tries) in fault["tries"].items() if tries and tries > 1}
        lines.append(
            f"  {name}: down {fault['down_seconds']:.1f} s with {fault['before']} in flight; set {fault['state']} "
            f"{fault['recovered_seconds']:.1f} s after it came back ({fault['set_seconds']:.0f} s in all)"
            + (
                f"; worker back on the broker after {fault['worker_back_seconds']:.1f} s"
                if name == "broker"
                else ""
            )
            + f"; retried task instances {retried or 'none'}; in-process database waits {fault['db_waits']}"
            + (
                f"; publishes retried {fault['publish_retries']}, failed {fault['publish_errors']}; "
                f"requeued after task_queued_timeout {fault['requeued']}"
                if name == "broker"
                else ""
            )
        )
    lines.append(
        f"  module {result.get('module_seconds', float('nan')):.0f} s (stop {result['stop_seconds']:.1f} s); "
        f"load {open('/proc/loadavg').read().split()[:3]}"
    )
    sys.stderr.write("\n" + "\n".join(lines) + "\n")


def _assert_set_complete(fault: dict[str, Any], paths: list[str], expected: int) -> None:
    assert fault["state"] == "success", fault["tries"]
    (record,) = fault["sets"]
    assert record["datetime_end"] is not None, "the set was not completed"
    by_path: dict[str, list[dict[str, Any]]] = {}
    for run in fault["runs"]:
        by_path.setdefault(run["source_path"], []).append(run)
    assert sorted(by_path) == sorted(paths)
    for path, runs in by_path.items():
        assert len(runs) == 1, f"{path} has {len(runs)} runs: {runs}"
        (run,) = runs
        assert run["status"] is True, run
        assert run["address_count"] == expected, run


def test_a_broker_restart_mid_set_loses_nothing(faults: dict[str, Any]) -> None:
    fault = faults["broker"]
    # The fault landed mid-set: entries were running and messages waited in the Redis that was lost.
    assert fault["before"]["states"].get("running", 0) >= WORKER_CONCURRENCY
    assert fault["before"]["in_redis"] >= 1
    _assert_set_complete(fault, faults["paths_1"], faults["expected"])
    # The scheduler tried to hand over a task while the broker was away, kept it, and failed none for it.
    assert fault["publish_retries"] >= 1
    assert fault["publish_errors"] == 0


def test_a_machine_database_outage_mid_set_loses_nothing(faults: dict[str, Any]) -> None:
    fault = faults["database"]
    _assert_set_complete(fault, faults["paths_2"], faults["expected"])
    # The outage reached the tasks: at least one waited for the database in-process, or failed and was retried.
    retried = [key for key, (_, tries) in fault["tries"].items() if tries and tries > 1]
    assert fault["db_waits"] or retried, fault
