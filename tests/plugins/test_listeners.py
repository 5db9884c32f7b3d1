"""The run listener's state machine with real task runs (``dag.test()``): success, timeout then a late success,
a retried attempt, a final failure; and the Machine-task metric through moto's CloudWatch."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

from openaddr.db.jobs import create_job, create_set, get_job
from openaddr.db.runs import finish_run, get_run, set_runs
from openaddr.machine import RunOwner, SourceSnapshot, plan_sources
from openaddr.storage import LocalStorage
from openaddr_airflow.listeners import timeout_of
from openaddr_airflow.operators import EntryTimedOut
from tests.conftest import ROOT
from tests.dags.test_dag_runs import fixture_source

if TYPE_CHECKING:
    from pathlib import Path

    from tests.airflow_fixtures import Machine
    from tests.github_server import FakeGitHub
    from tests.servers import LoopbackHTTPServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARK = "sources/us-wy-park.json"


def planned_park(machine: Machine, fixtures: Path, url: str, owner: RunOwner) -> dict[str, Any]:
    storage = LocalStorage(machine.storage)
    snapshot = SourceSnapshot(PARK, "blob-park", fixture_source(fixtures, "us-wy-park.json", url))
    (entry,) = plan_sources(machine.engine, storage, [snapshot], prefix="tests/sources", owner=owner)
    return entry.to_dict()


@pytest.fixture(scope="module")
def listener_dags(machine_dags: Any) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "tests" / "dags" / "listener_dags.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def run_with(dag: Any, entry: dict[str, Any], owner: RunOwner, **conf: Any) -> Any:
    return dag.test(run_conf={"entry": entry, "run_owner": vars(owner), **conf})


def only_ti(dag_run: Any) -> Any:
    (ti,) = dag_run.get_task_instances()
    return ti


def test_timeout_fails_the_run_and_a_late_success_is_dropped(
    listener_dags: dict[str, Any], machine: Machine, fixtures: Path, http_server: LoopbackHTTPServer
) -> None:
    hanging = http_server.add_hanging(f"/listener/{uuid.uuid4().hex}/hangs.zip")
    set_id = create_set(machine.engine, owner="openaddresses", repository="openaddresses", commit_sha=None)
    owner = RunOwner("batch", set_id=set_id)
    entry = planned_park(machine, fixtures, hanging, owner)
    dag_run = run_with(listener_dags["listener_timeout"], entry, owner)
    ti = only_ti(dag_run)
    assert ti.state == "failed"
    assert ti.try_number == 1  # a timeout is not retried
    (run,) = set_runs(machine.engine, set_id)
    assert run["status"] is False
    assert run["message"] == "Timed out after 0:00:04"
    assert run["state"] is None

    late = finish_run(
        machine.engine,
        run["id"],
        state={"address count": 346, "processed": "out.csv", "sample": "sample.json", "cache": "cache.zip"},
        attempt_started=run["datetime_start"],
        try_number=1,
    )
    assert late is False
    assert get_run(machine.engine, run["id"])["message"] == "Timed out after 0:00:04"


def test_retried_attempt_reuses_its_run_and_succeeds(
    listener_dags: dict[str, Any], machine: Machine, fixtures: Path, http_server: LoopbackHTTPServer
) -> None:
    set_id = create_set(machine.engine, owner="openaddresses", repository="openaddresses", commit_sha=None)
    owner = RunOwner("batch", set_id=set_id)
    entry = planned_park(machine, fixtures, http_server.url("/data/us-wy-park.zip"), owner)
    hits = http_server.hits["/data/us-wy-park.zip"]
    ti = only_ti(run_with(listener_dags["listener_retry"], entry, owner))
    assert ti.state == "success"
    assert ti.try_number == 2
    # One run per task instance whatever the attempts: the retry finds the success its first attempt recorded
    # before the worker was lost, and neither copies nor downloads it again.
    (run,) = set_runs(machine.engine, set_id)
    assert run["status"] is True
    assert run["copy_of"] is None
    assert run["airflow_try_number"] == 1
    assert http_server.hits["/data/us-wy-park.zip"] == hits + 1


def test_final_failure_fails_the_run_and_the_job(
    listener_dags: dict[str, Any],
    machine: Machine,
    fixtures: Path,
    http_server: LoopbackHTTPServer,
    fake_github: FakeGitHub,
) -> None:
    job_id = str(uuid.uuid4())
    status_url = fake_github.status_url("openaddresses", "openaddresses", "f" * 40)
    create_job(machine.engine, job_id=job_id, task_files={"blob-park": PARK}, github_status_url=status_url)
    owner = RunOwner("ci", job_id=job_id)
    entry = planned_park(machine, fixtures, http_server.url("/data/us-wy-park.zip"), owner)
    ti = only_ti(run_with(listener_dags["listener_crash"], entry, owner, job_id=job_id))
    assert ti.state == "failed"
    job = get_job(machine.engine, job_id)
    assert job["status"] is False
    assert job["file_states"] == {PARK: False}
    (entry_result,) = job["file_results"][PARK]["entries"]
    assert entry_result["message"] == "Something went wrong in openaddr-process-one"
    assert fake_github.statuses[-1]["state"] == "failure"
    assert fake_github.statuses[-1]["description"] == f"Failed on {PARK} from {PARK}"


def test_a_group_that_times_out_accounts_for_every_entry(
    listener_dags: dict[str, Any], machine: Machine, fixtures: Path, http_server: LoopbackHTTPServer
) -> None:
    set_id = create_set(machine.engine, owner="openaddresses", repository="openaddresses", commit_sha=None)
    owner = RunOwner("batch", set_id=set_id)
    fine = planned_park(machine, fixtures, http_server.url("/data/us-wy-park.zip"), owner)
    # Another file (each snapshot is stored under its path), its data never arriving.
    hanging = http_server.add_hanging(f"/listener/{uuid.uuid4().hex}/h.zip")
    snapshot = SourceSnapshot(
        "sources/us-wy-park-hangs.json", "blob-hangs", fixture_source(fixtures, "us-wy-park.json", hanging)
    )
    (planned,) = plan_sources(
        machine.engine, LocalStorage(machine.storage), [snapshot], prefix="tests/sources", owner=owner
    )
    hangs = planned.to_dict()
    never = {**fine, "label": "us-wy-park/addresses/never-reached"}
    dag_run = listener_dags["listener_group_timeout"].test(
        run_conf={"entries": [fine, hangs, never], "run_owner": vars(owner)}
    )
    ti = only_ti(dag_run)
    assert ti.state == "failed"
    assert ti.try_number == 1  # a timeout is not retried
    assert ti.rendered_map_index is None or "+ 2 more" in ti.rendered_map_index
    runs = sorted(set_runs(machine.engine, set_id), key=lambda run: run["airflow_slot"])
    # The first entry finished; the one running at the deadline and the one never reached fail with the timeout.
    assert [(run["airflow_slot"], run["status"], run["message"]) for run in runs] == [
        (0, True, "Everything is fine"),
        (1, False, "Timed out after 0:00:20"),
        (2, False, "Timed out after 0:00:20"),
    ]


def caused_by(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, False),
        (RuntimeError("boom"), False),
        # The text does not count: a source's own timeout is a source problem the task recorded.
        (ValueError("Timed out after 3:05:00"), False),
        ("Timed out after 3:05:00", False),
        (AirflowTaskTimeout(), True),
        (EntryTimedOut("Timed out after 3:05:00"), True),
        (caused_by(AirflowFailException("failed"), AirflowTaskTimeout()), True),
        (caused_by(OSError("lost the database"), caused_by(RuntimeError("x"), AirflowTaskTimeout())), True),
    ],
)
def test_timeout_of(error: Any, expected: bool) -> None:
    assert timeout_of(error) is expected


def test_metric_goes_to_cloudwatch(
    listener_dags: dict[str, Any],
    machine: Machine,
    fixtures: Path,
    http_server: LoopbackHTTPServer,
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    namespace = f"OpenAddresses/Test{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_CLOUDWATCH_NAMESPACE", namespace)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
            }
        ),
    )
    set_id = create_set(machine.engine, owner="openaddresses", repository="openaddresses", commit_sha=None)
    owner = RunOwner("batch", set_id=set_id)
    entry = planned_park(machine, fixtures, http_server.url("/data/us-wy-park.zip"), owner)
    assert only_ti(run_with(listener_dags["listener_metric"], entry, owner)).state == "success"
    client = boto3.client(
        "cloudwatch",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    metrics = client.list_metrics(Namespace=namespace)["Metrics"]
    assert {metric["MetricName"] for metric in metrics} == {"MachineTasks", "MachineLargeTasks"}
    stats = client.get_metric_statistics(
        Namespace=namespace,
        MetricName="MachineTasks",
        StartTime=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        Period=3600,
        Statistics=["Maximum", "SampleCount"],
    )["Datapoints"]
    # Published when the task started and when it ended; the running task counts itself.
    assert stats[0]["SampleCount"] >= 2
    assert stats[0]["Maximum"] >= 1
