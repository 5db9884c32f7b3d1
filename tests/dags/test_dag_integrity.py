"""DAG integrity: every DAG file parses cleanly and follows the project's policies (style guide point 12)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.configuration import conf
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import BaseHook

from openaddr_airflow.tags import Tag
from tests.conftest import ROOT

DAGS = ROOT / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))


@pytest.fixture(scope="module")
def dagbag(monkeypatch_module: pytest.MonkeyPatch) -> DagBag:
    calls: list[str] = []

    def no_connections(conn_id: str) -> None:
        calls.append(conn_id)
        raise AssertionError(f"connection {conn_id!r} looked up while parsing")

    monkeypatch_module.setattr(BaseHook, "get_connection", no_connections)
    bag = DagBag(dag_folder=str(DAGS))
    assert not calls, f"DAG files looked up connections while parsing: {calls}"
    return bag


@pytest.fixture(scope="module")
def monkeypatch_module() -> pytest.MonkeyPatch:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_dag_files_import_without_errors(dagbag: DagBag) -> None:
    assert DAG_FILES, "no DAG files"
    assert not dagbag.import_errors, dagbag.import_errors


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_file_holds_the_dag_named_like_it(dagbag: DagBag, path: Path) -> None:
    dag = dagbag.dags.get(path.stem)
    assert dag is not None, f"{path.name}: no DAG with id {path.stem!r}"
    assert Path(dag.fileloc).name == path.name


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_policies(dagbag: DagBag, path: Path) -> None:
    dag = dagbag.dags[path.stem]
    vocabulary = {tag.value for tag in Tag}
    assert dag.tags, f"{path.name}: no tags"
    assert set(dag.tags) <= vocabulary, f"{path.name}: tags {dag.tags} outside {vocabulary}"
    assert any(tag.startswith("kind/") for tag in dag.tags), f"{path.name}: needs a kind/ tag"
    assert dag.catchup is False, f"{path.name}: catchup must be explicit and off"
    assert len(dag.doc_md or "") > 200, f"{path.name}: doc_md must describe the DAG"
    assert dag.start_date == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for task in dag.tasks:
        assert task.owner == "openaddresses", f"{path.name}:{task.task_id}: owner"
        assert task.retries >= 1, f"{path.name}:{task.task_id}: retries"


#: The Celery queue of every task (issue 16): each DAG's own, but the large entries' ``large``.
DAG_QUEUES = {
    "openaddr_ci": "ci",
    "openaddr_batch": "batch",
    "openaddr_collect": "batch",
    "openaddr_refresh_merged": "batch",
    "openaddr_alert_broken_sources": "batch",
    "openaddr_housekeeping": "batch",
}
TASK_QUEUES = {"process_large_source": "large"}


def test_every_dag_has_its_queue() -> None:
    assert {path.stem for path in DAG_FILES} == set(DAG_QUEUES), "a new DAG needs its queue here"


@pytest.mark.parametrize("dag_id", sorted(DAG_QUEUES))
def test_every_task_goes_to_its_queue(dagbag: DagBag, dag_id: str) -> None:
    from openaddr_airflow.operators import QUEUES

    dag = dagbag.dags[dag_id]
    queues = {task.task_id: task.queue for task in dag.tasks}
    expected = {task_id: TASK_QUEUES.get(task_id, DAG_QUEUES[dag_id]) for task_id in queues}
    assert queues == expected
    assert set(queues.values()) <= set(QUEUES)
    # Nothing is left on Airflow's "default" queue, which no worker consumes.
    assert "default" not in queues.values()


@pytest.mark.parametrize(("dag_id", "weight"), [("openaddr_ci", 1000), ("openaddr_batch", 1)])
@pytest.mark.parametrize(
    ("task_id", "pool"), [("process_source", "oa_sources"), ("process_large_source", "oa_large")]
)
def test_process_source_is_pooled_timed_and_named(
    dagbag: DagBag, dag_id: str, weight: int, task_id: str, pool: str
) -> None:
    task = dagbag.dags[dag_id].get_task(task_id)
    assert task.pool == pool
    assert task.queue == TASK_QUEUES.get(task_id, DAG_QUEUES[dag_id])
    assert task.priority_weight == weight
    assert str(task.weight_rule).endswith("absolute")
    assert task.execution_timeout == dt.timedelta(hours=3, minutes=5)
    assert task.retries == 2
    # No delay of its own: [core] default_task_retry_delay (airflow.cfg: 15 s; Airflow's 300 s in this session).
    assert task.retry_delay == dt.timedelta(seconds=conf.getint("core", "default_task_retry_delay"))
    assert task.retry_exponential_backoff == 10.0
    assert "label" in task.map_index_template


#: The DAGs whose failed scheduled runs alert the maintainers (machine-ci.md §11, and the daily maintenance DAGs).
ALERTING_DAGS = sorted(set(DAG_QUEUES) - {"openaddr_ci"})


@pytest.mark.parametrize("dag_id", ALERTING_DAGS)
def test_failed_scheduled_runs_alert_the_maintainers(dagbag: DagBag, dag_id: str) -> None:
    from openaddr_airflow.alerts import FailedRunNotifier

    callback = dagbag.dags[dag_id].on_failure_callback
    callbacks = callback if isinstance(callback, list) else [callback]
    assert [type(c) for c in callbacks] == [FailedRunNotifier], f"{dag_id}: {callback!r}"


def test_schedules(dagbag: DagBag) -> None:
    assert dagbag.dags["openaddr_ci"].schedule is None
    assert dagbag.dags["openaddr_batch"].schedule == "@daily"
    housekeeping = dagbag.dags["openaddr_housekeeping"]
    assert housekeeping.schedule == "@weekly"
    assert housekeeping.max_active_runs == 1
    assert [task.task_id for task in housekeeping.tasks] == ["sweep_runs"]
    assert "openaddresses/machine#777" in housekeeping.doc_md
    batch = dagbag.dags["openaddr_batch"]
    assert batch.max_active_runs == 1
    # Two slots of oa_sources stay free for CI (machine-ci.md §3.3); large entries never take one of them.
    from openaddr_airflow.settings import LARGE_POOL_SLOTS, POOL_SLOTS

    assert batch.get_task("process_source").max_active_tis_per_dagrun == POOL_SLOTS - 2
    assert batch.get_task("process_large_source").max_active_tis_per_dagrun is None
    assert batch.max_active_tasks == POOL_SLOTS - 2 + LARGE_POOL_SLOTS
    assert dagbag.dags["openaddr_ci"].get_task("process_source").max_active_tis_per_dagrun is None


def test_collect_runs_when_the_batch_completes_a_set(dagbag: DagBag) -> None:
    emitted = {outlet.uri for outlet in dagbag.dags["openaddr_batch"].get_task("complete_set").outlets}
    collect = dagbag.dags["openaddr_collect"]
    scheduled_on = {asset.uri for asset in collect.timetable.asset_condition.objects}
    assert emitted == scheduled_on == {"openaddr://sets/latest"}
    assert [task.task_id for task in collect.tasks] == [
        "plan_collect", "collect_area", "dedupe_collections", "record_collections",
    ]  # fmt: skip
    assert collect.max_active_runs == 1
    assert "openaddr-collected-<area>.zip" in collect.doc_md


def test_collect_maps_one_task_per_area_then_records_once(dagbag: DagBag) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from openaddr.collect.areas import AREAS

    collect = dagbag.dags["openaddr_collect"]
    area = collect.get_task("collect_area")
    assert isinstance(area, MappedOperator)
    assert area.op_kwargs_expand_input.value == {"area": list(AREAS)}  # one instance per area, global first
    assert area.upstream_task_ids == {"plan_collect"}
    assert collect.get_task("dedupe_collections").upstream_task_ids == {"plan_collect", "collect_area"}
    record = collect.get_task("record_collections")
    assert record.upstream_task_ids == {"plan_collect", "collect_area", "dedupe_collections"}
    assert not isinstance(record, MappedOperator)


@pytest.mark.parametrize(
    ("dag_id", "planner", "finish"),
    [("openaddr_ci", "plan_job", "finish_job"), ("openaddr_batch", "list_sources", "complete_set")],
)
def test_both_tiers_map_over_their_share_of_the_plan(
    dagbag: DagBag, dag_id: str, planner: str, finish: str
) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.get_task("process_source").upstream_task_ids == {planner}
    assert dag.get_task("large_sources").upstream_task_ids == {planner}
    assert dag.get_task("process_large_source").upstream_task_ids == {"large_sources"}
    for task_id in ("process_source", "process_large_source"):
        assert finish in dag.get_task(task_id).downstream_task_ids


def test_the_batch_gives_released_entries_tasks_of_their_own(dagbag: DagBag) -> None:
    """A group past its deadline releases the entries it has not started: ``released_sources`` gathers them once
    every ``process_source`` has ended, whatever its state, and ``process_released_source`` maps over them in the
    standard pool; CI never groups, so it has neither."""
    batch = dagbag.dags["openaddr_batch"]
    gather = batch.get_task("released_sources")
    released = batch.get_task("process_released_source")
    assert gather.upstream_task_ids == {"process_source"}
    assert gather.trigger_rule == "all_done"
    assert released.upstream_task_ids == {"released_sources"}
    assert (released.pool, released.priority_weight) == ("oa_sources", 1)
    assert "complete_set" in released.downstream_task_ids
    assert "released_sources" not in dagbag.dags["openaddr_ci"].task_ids


def test_finishing_tasks_run_whatever_happened_upstream(dagbag: DagBag) -> None:
    assert dagbag.dags["openaddr_ci"].get_task("finish_job").trigger_rule == "all_done"
    assert dagbag.dags["openaddr_batch"].get_task("complete_set").trigger_rule == "all_done"


def test_parsing_imports_no_gdal_proj_or_conform_code() -> None:
    # A fresh interpreter: what parsing the DAG files pulls in, and nothing a test imported before.
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "heavy = ('fiona', 'pyogrio', 'pyproj', 'osgeo', 'shapely', 'openaddr.conform', 'openaddr.readers')\n"
        "print(json.dumps({'errors': list(bag.import_errors), 'dags': sorted(bag.dags),\n"
        "    'loaded': sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    assert result["dags"] == [
        "openaddr_alert_broken_sources",
        "openaddr_batch",
        "openaddr_ci",
        "openaddr_collect",
        "openaddr_housekeeping",
        "openaddr_refresh_merged",
    ]
    assert result["loaded"] == []
