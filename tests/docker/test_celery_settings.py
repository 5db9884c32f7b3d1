"""The Celery settings a worker really runs with in production (issue 16, part 2): the celery provider's
``DEFAULT_CELERY_CONFIG`` merged with the committed ``airflow.cfg`` and ``docker/production.env``, read from the
Celery app the provider builds, in a fresh interpreter (Airflow reads its configuration once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT

PROBE = """
import json
from airflow.configuration import conf
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from airflow.providers.celery.executors.celery_executor_utils import app

names = ["task_acks_late", "worker_prefetch_multiplier", "task_default_queue", "task_track_started",
         "broker_transport_options", "worker_soft_shutdown_timeout", "task_reject_on_worker_lost",
         "worker_concurrency", "task_publish_retry_policy", "broker_connection_max_retries",
         "broker_connection_retry_on_startup"]
print(json.dumps({
    "app": {name: app.conf[name] for name in names},
    "default_config_keys": sorted(DEFAULT_CELERY_CONFIG),
    "default_queue": conf.get("operators", "default_queue"),
    "operation_timeout": conf.getfloat("celery", "operation_timeout"),
    "task_publish_max_retries": conf.getint("celery", "task_publish_max_retries"),
    "task_queued_timeout": conf.getfloat("scheduler", "task_queued_timeout"),
}))
"""


def production_environment(tmp: str) -> dict[str, str]:
    """``docker/production.env`` without its secret-backend lookups (they would call AWS), on a local SQLite
    metadata database, and nothing of this test session's own Airflow settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "OPENADDR"))}
    for line in (ROOT / "docker" / "production.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            if not key.endswith("_SECRET") and not key.startswith("AIRFLOW__SECRETS__"):
                env[key] = value
    env.update(
        {
            "AIRFLOW_HOME": tmp,
            "AIRFLOW_CONFIG": str(ROOT / "airflow.cfg"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp}/airflow.db",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+sqlite:///{tmp}/airflow.db",
            "PYTHONPATH": str(ROOT / "plugins"),
        }
    )
    return env


@pytest.fixture(scope="module")
def effective(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = str(tmp_path_factory.mktemp("celery-config"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=production_environment(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_late_acks_and_one_message_per_process(effective: dict[str, Any]) -> None:
    app = effective["app"]
    # A message is acknowledged when its task ends, so a worker lost mid-task leaves it in the broker.
    assert app["task_acks_late"] is True
    # Each pool process reserves one message: a busy worker never holds a message another one could start.
    assert app["worker_prefetch_multiplier"] == 1
    assert app["task_track_started"] is True
    # The worker's concurrency comes from production.env (a host's slots).
    assert app["worker_concurrency"] == 4


def test_the_visibility_timeout_outlasts_the_longest_deadline(effective: dict[str, Any]) -> None:
    from openaddr.process_one import MAX_TIMEOUT_HOURS
    from openaddr_airflow.operators import DEADLINE_GRACE, EXECUTION_TIMEOUT

    timeout = int(effective["app"]["broker_transport_options"]["visibility_timeout"])
    longest = MAX_TIMEOUT_HOURS * 3600 + DEADLINE_GRACE.total_seconds()
    assert timeout > longest > EXECUTION_TIMEOUT.total_seconds()
    # The provider's default (24 h) would not: the setting is ours.
    assert timeout != 86400


def test_sigterm_is_a_warm_shutdown(effective: dict[str, Any]) -> None:
    app = effective["app"]
    # No soft shutdown: on SIGTERM the worker takes no new message and waits for its running tasks, however long.
    assert app["worker_soft_shutdown_timeout"] == 0
    # A pool process killed under a task acknowledges its message: Airflow's heartbeat check retries the task
    # instance, the broker does not hand the same message to another worker.
    assert app["task_reject_on_worker_lost"] is not True


def test_unnamed_tasks_go_to_the_batch_workers(effective: dict[str, Any]) -> None:
    from openaddr_airflow.operators import BATCH_QUEUE

    assert effective["default_queue"] == BATCH_QUEUE
    assert effective["app"]["task_default_queue"] == BATCH_QUEUE


def test_a_broker_outage_neither_fails_a_task_nor_stops_a_worker(effective: dict[str, Any]) -> None:
    """Issue 16 fault (c), the configuration ``tests/test_faults_infra.py`` runs with: Celery's own publish retries
    outlast the executor's operation timeout, so a publish to a broker that is down times out and the executor
    keeps the task for its next loop (up to ``task_publish_max_retries`` loops) instead of failing it; the workers
    reconnect for ever and at start."""
    app = effective["app"]
    policy = app["task_publish_retry_policy"]
    waits = [
        min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"]) for n in range(10)
    ]
    assert sum(waits[: policy["max_retries"]]) > effective["operation_timeout"]
    assert effective["task_publish_max_retries"] >= 300
    assert app["broker_connection_max_retries"] is None
    assert app["broker_connection_retry_on_startup"] is True


def test_a_lost_message_is_requeued_after_a_scale_out_wait(effective: dict[str, Any]) -> None:
    # Long enough for a message to wait out a scale-out (its token lives as long), short enough to requeue a
    # message a broker restart lost within the half hour.
    assert effective["task_queued_timeout"] == 1800
