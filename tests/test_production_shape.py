"""The production shape for real (airflow.md, "Production shape"): Airflow's metadata on PostgreSQL, the
CeleryExecutor with Redis as the broker, one Celery worker, the Machine database on PostgreSQL.

One module-scoped run: fresh PostgreSQL databases for Airflow and for the Machine, a Redis database index of
its own, :class:`~devstack.stack.Stack` with ``executor="celery"`` on free ports, one ``openaddr_ci`` run
triggered through the REST API with a real fixture source (Park County, WY) served on loopback and GitHub on
loopback. The tests then read what each party recorded. ``pytest -s`` shows the timings and each component's
memory (PSS).

The last tests check the stack's configuration of that shape without starting anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from devstack import StackError
from devstack.procs import processes_of, session_members
from devstack.stack import CELERY_WORKER, COMPONENTS, Stack
from openaddr.db import make_engine
from openaddr.db.jobs import get_job
from openaddr.db.runs import job_runs
from tests.celery_stack import celery_stack, stack_databases
from tests.dags.test_dag_runs import PARK, ci_conf, fixture_source, park_points

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.github_server import FakeGitHub
    from tests.servers import LoopbackHTTPServer


#: Healthy in ~35 s, the CI run in ~20 s, stopped in ~12 s on a 2-core machine busy with a benchmark beside;
#: the timeouts leave room for a busier one.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0
WORKER_CONCURRENCY = 2
DAG_ID = "openaddr_ci"


def _task_instances(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    answer = stack.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
    return list(answer["task_instances"])


def _wait_sampling_memory(stack: Stack, run_id: str, peak: dict[str, int]) -> str:
    """Wait for the run to end (as :meth:`Stack.wait`), keeping each component's highest PSS meanwhile."""
    started = time.monotonic()
    while True:
        stack.check_alive()
        for name, size in stack.memory().items():
            peak[name] = max(peak.get(name, 0), size)
        state = stack.state(DAG_ID, run_id)
        if state in ("success", "failed"):
            return state
        if time.monotonic() - started > RUN_TIMEOUT:
            raise TimeoutError(f"{DAG_ID} run {run_id} still {state} after {RUN_TIMEOUT:.0f} s")
        time.sleep(1)


@pytest.fixture(scope="module")
def production_run(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_admin_url: sa.URL,
    redis_url: str,
    http_server: LoopbackHTTPServer,
    github_server: FakeGitHub,
    fixtures: Path,
) -> Iterator[dict[str, Any]]:
    """Start the Celery stack, run one CI job with the Park County source, stop the stack; the databases live
    until the module's tests are done, the home (logs) in pytest's temporary folder."""
    with stack_databases(postgres_admin_url) as databases:
        home = tmp_path_factory.mktemp("production") / "var"
        job_id = str(uuid.uuid4())
        conf = ci_conf(
            job_id,
            {PARK: fixture_source(fixtures, "us-wy-park.json", http_server.url("/data/us-wy-park.zip"))},
            github_server,
        )
        result: dict[str, Any] = {
            "job_id": job_id,
            "conf": conf,
            "machine_url": databases.machine_url,
            "memory": {},
        }
        with celery_stack(
            home,
            databases,
            dag_id=DAG_ID,
            broker_url=redis_url,
            worker_concurrency=WORKER_CONCURRENCY,
            start_timeout=START_TIMEOUT,
            github=github_server,
        ) as running:
            stack = result["stack"] = running.stack
            result["supervisord"] = stack.supervisord.pid
            result["pids"] = stack.pids()
            result["idle_memory"] = stack.memory()
            stack.unpause(DAG_ID)
            triggered = time.monotonic()
            run_id = stack.trigger(DAG_ID, conf, run_id=f"production-{job_id}")
            result["run_id"] = run_id
            result["state"] = _wait_sampling_memory(stack, run_id, result["memory"])
            result["run_seconds"] = time.monotonic() - triggered
            result["task_instances"] = _task_instances(stack, run_id)
            result["github_statuses"] = list(github_server.statuses)
        result["stop_seconds"] = running.stop_seconds
        result["left"] = sorted(
            set(session_members(result["supervisord"]) if "supervisord" in result else [])
            | {pid for pid in result.get("pids", {}).values() if os.path.exists(f"/proc/{pid}")}
            | set(processes_of(stack.airflow_home))
        )
        result["worker_log"] = (stack.logs / f"{CELERY_WORKER}.log").read_text(errors="replace")
        _report(result)
        yield result


def _report(result: dict[str, Any]) -> None:
    """Timings and memory on stderr (shown with ``pytest -s``)."""
    stack: Stack = result["stack"]
    mib = 2**20
    lines = [
        f"production shape: healthy after {stack.timings.get('healthy', float('nan')):.1f} s "
        f"(migrations {stack.timings.get('migrate', float('nan')):.1f} s, DAGs parsed after "
        f"{stack.timings.get('ready', float('nan')):.1f} s); CI run {result.get('state')} after "
        f"{result.get('run_seconds', float('nan')):.1f} s; stopped in {result['stop_seconds']:.1f} s",
        "  PSS MiB idle / peak during the run: "
        + ", ".join(
            f"{name} {result.get('idle_memory', {}).get(name, 0) / mib:.0f} / {size / mib:.0f}"
            for name, size in result["memory"].items()
        ),
    ]
    sys.stderr.write("\n" + "\n".join(lines) + "\n")


@pytest.mark.integration
@pytest.mark.slow
def test_the_ci_run_succeeds_and_the_stack_stops_without_leftovers(production_run: dict[str, Any]) -> None:
    assert production_run["state"] == "success"
    tis = production_run["task_instances"]
    states = {(ti["task_id"], ti["state"]) for ti in tis}
    # No large entry in this job: the large tier maps to nothing and is skipped.
    assert states == {
        ("plan_job", "success"),
        ("large_sources", "success"),
        ("process_source", "success"),
        ("process_large_source", "skipped"),
        ("finish_job", "success"),
    }
    assert set(production_run["pids"]) == {*COMPONENTS, CELERY_WORKER}
    assert production_run["left"] == [], "processes of the stack outlived stop()"
    stack: Stack = production_run["stack"]
    assert not list(stack.airflow_home.glob("*.pid"))
    assert stack.supervisord is None
    assert stack.pids() == {}


@pytest.mark.integration
@pytest.mark.slow
def test_the_job_is_recorded_in_the_postgresql_machine_database(
    production_run: dict[str, Any], fixtures: Path
) -> None:
    engine = make_engine(production_run["machine_url"])
    try:
        job = get_job(engine, production_run["job_id"])
        runs = job_runs(engine, production_run["job_id"])
    finally:
        engine.dispose()
    assert job["status"] is True
    assert job["file_states"] == {PARK: True}
    (run,) = runs
    assert run["source_path"] == PARK
    assert run["status"] is True, run["message"]
    expected = park_points(fixtures)
    assert expected > 0
    assert run["address_count"] == expected
    assert run["airflow_ti"].startswith(f"{DAG_ID}/{production_run['run_id']}/process_source/")
    stack: Stack = production_run["stack"]
    index = stack.storage / "runs" / str(run["id"]) / "index.json"
    assert index.is_file()
    keys, values = json.loads(index.read_text())
    assert dict(zip(keys, values, strict=True))["processed"].endswith(f"runs/{run['id']}/us-wy-park.zip")


@pytest.mark.integration
@pytest.mark.slow
def test_every_task_instance_ran_on_the_celery_worker(production_run: dict[str, Any]) -> None:
    """The CeleryExecutor records each task's Celery task id on the task instance; the worker logs that id
    when it executes the workload, and the result backend (on the metadata database) records it as done."""
    stack: Stack = production_run["stack"]
    engine = sa.create_engine(stack.metadata_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            instances = connection.execute(
                sa.text(
                    "SELECT task_id, map_index, state, external_executor_id, queue FROM task_instance "
                    "WHERE dag_id = :dag_id AND run_id = :run_id"
                ),
                {"dag_id": DAG_ID, "run_id": production_run["run_id"]},
            ).all()
            results = dict(connection.execute(sa.text("SELECT task_id, status FROM celery_taskmeta")).all())
    finally:
        engine.dispose()
    # The large tier had nothing to do: skipped by the scheduler, never sent to its queue.
    skipped = [row for row in instances if row[0] == "process_large_source"]
    assert [(state, celery_id, queue) for _, _, state, celery_id, queue in skipped] == [
        ("skipped", None, "large")
    ]
    ran = [row for row in instances if row[0] != "process_large_source"]
    assert len(ran) == 4
    worker_log = production_run["worker_log"]
    for task_id, map_index, state, celery_id, queue in ran:
        assert state == "success", task_id
        assert celery_id, f"{task_id}[{map_index}] has no Celery task id: it did not go through Celery"
        assert queue == "ci"
        assert results.get(celery_id) == "SUCCESS", (task_id, celery_id, results)
        executing = next(
            (
                line
                for line in worker_log.splitlines()
                if f"[{celery_id}] Executing workload in Celery" in line
            ),
            None,
        )
        assert executing is not None, f"the worker's log does not name {task_id} ({celery_id})"
        assert f"task_id='{task_id}'" in executing
        assert f"run_id='{production_run['run_id']}'" in executing
    assert f"{stack.worker_node} ready." in worker_log


@pytest.mark.integration
@pytest.mark.slow
def test_github_saw_pending_then_success(production_run: dict[str, Any]) -> None:
    posted = production_run["github_statuses"]
    sha = production_run["conf"]["commit_sha"]
    assert posted, "no commit status reached GitHub"
    assert [status["sha"] for status in posted] == [sha] * len(posted)
    states = [status["state"] for status in posted]
    assert states[0] == "pending"
    assert states[-1] == "success"
    assert set(states) == {"pending", "success"}
    assert posted[-1]["description"] == f"Succeeded on {PARK}"
    assert all("ci-token" in status["authorization"] for status in posted)


# Configuration, no service ---------------------------------------------------------------------------------


def test_the_tasks_get_the_machine_database_the_stack_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openaddr_airflow import config

    url = "postgresql+psycopg2://machine:p%40ss@127.0.0.1:5433/openaddr_machine"
    stack = Stack(
        tmp_path,
        1,
        executor="celery",
        metadata_url="postgresql://airflow@127.0.0.1/airflow",
        machine_database_url=url,
    )
    env = stack.environment()
    assert stack.machine_database_url == env["OPENADDR_DATABASE_URL"] == url
    # As a task reads it: the connection through the Postgres provider's hook.
    monkeypatch.setenv("AIRFLOW_CONN_OPENADDR_MACHINE_DB", env["AIRFLOW_CONN_OPENADDR_MACHINE_DB"])
    seen = sa.make_url(config.machine_database_url())
    assert seen.set(drivername="postgresql") == sa.make_url(url).set(drivername="postgresql")
    assert seen.password == "p@ss"


def test_the_celery_environment(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path,
        8123,
        executor="celery",
        metadata_url="postgresql+psycopg2://airflow:secret@db.internal:5432/airflow",
        broker_url="redis://127.0.0.1:6379/7",
        worker_concurrency=6,
        parallelism=2,
    )
    env = stack.environment()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == stack.metadata_url
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/7"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://airflow:secret@db.internal:5432/airflow"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "6"
    assert env["OPENADDR_POOL_SLOTS"] == "6"
    assert stack.component_names == (*COMPONENTS, CELERY_WORKER)
    assert stack.worker_node.startswith("openaddr-8123@")


def test_the_default_stack_stays_local_and_on_sqlite(tmp_path: Path) -> None:
    stack = Stack(tmp_path, 8124, parallelism=5)
    env = stack.environment()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert stack.machine_database_url == f"sqlite:///{tmp_path / 'machine.db'}"
    assert json.loads(env["AIRFLOW_CONN_OPENADDR_MACHINE_DB"]) == {
        "conn_type": "sqlite",
        "host": str(tmp_path / "machine.db"),
    }
    assert not any(key.startswith("AIRFLOW__CELERY__") and key not in os.environ for key in env)
    assert env["OPENADDR_POOL_SLOTS"] == "5"
    # The plugins use their local defaults (var/machine.db, var/storage) in this mode only.
    assert env["OPENADDR_EMBEDDED"] == "1"
    assert stack.component_names == COMPONENTS


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"executor": "kubernetes"}, "executor must be one of local, celery"),
        ({"executor": "celery"}, "needs a PostgreSQL metadata database"),
        ({"env": {"AIRFLOW_CONN_OPENADDR_MACHINE_DB": "{}"}}, "pass machine_database_url instead"),
        ({"env": {"OPENADDR_DATABASE_URL": "sqlite://"}}, "pass machine_database_url instead"),
    ],
)
def test_inconsistent_stacks_are_refused(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(StackError, match=message):
        Stack(tmp_path, 8125, **arguments)
