"""
### OpenAddresses batch: process every source, every night

1. **create_set** lists the sources at one commit of the configured location (variable `openaddr_sources`: a
   checkout folder, or `github:owner/repository[@ref]` read as one tarball), records the set and stores the files
   under `sets/<set id>/sources/`.
2. **list_sources** expands them into layer entries, slowest first by the previous set's times; invalid files are
   recorded as failed runs (`invalid_source`).
3. **process_source**, one mapped instance per entry, named `source/layer/name`, except that entries which took
   under a minute in the previous set (or, without a previous time, are estimated to: ArcGIS count, HTTP
   `Content-Length`) are grouped, up to 100 and 5 minutes a task (less, so that there are at least four tasks per
   worker slot; named `first label + N more`), because a task costs Airflow more than a small source takes. A group that runs past 10 minutes releases the entries it has
   not started to **process_released_source**, a task each. For each entry: copies a successful run of the
   last 6 days of the same entry, or downloads and conforms it in a child forked from a zygote that has
   imported the processing stack once per task (3-hour deadline), publishes
   `runs/<run id>/` and records the run. Low priority in pool `oa_sources`: a free slot always goes to CI first, and
   two slots are kept for CI alone. Entries with `conform.size: large` run as **process_large_source** on the
   large workers (pool `oa_large`, queue `large`).
4. **complete_set** marks the set complete once every entry has finished, and emits the asset
   `openaddr://sets/latest` for the collection DAG.
5. **send_set_alerts** sends the set's summary (successes, failures, warnings, new failures) to the maintainers
   through the connections `openaddr_alerts_smtp` / `openaddr_alerts_slack` (without either, alerts are off and
   the summary in the task's log says so), and mails the subscribers of each source that broke or recovered.

A failed scheduled run of this DAG is an alert too (`on_failure_callback`, as on `openaddr_collect`,
`openaddr_refresh_merged`, `openaddr_alert_broken_sources` and `openaddr_housekeeping`).

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from openaddr_airflow.alerts import FailedRunNotifier
from openaddr_airflow.operators import BATCH_QUEUE, DEFAULT_ARGS, process_sources
from openaddr_airflow.settings import BATCH_MAX_ACTIVE_DAG_TASKS, BATCH_MAX_ACTIVE_TASKS
from openaddr_airflow.tags import Tag

LATEST_SET = Asset("openaddr://sets/latest")


@task
def create_set(**context) -> int:
    """List the sources at the configured location, record the set and store its files; return the set's id."""
    from openaddr.machine import create_batch_set
    from openaddr.sources_repo import list_sources
    from openaddr_airflow import config

    listing = list_sources(config.sources_location(), client_factory=config.github_client)
    with config.machine_engine() as engine:
        return create_batch_set(engine, config.machine_storage(), listing, dag_run_id=context["run_id"])


@task
def list_sources(set_id: int, **context) -> list[dict]:
    """Expand the set's files into layer entries (invalid files recorded as failed runs), grouped into tasks.

    :param set_id: the set :func:`create_set` recorded
    :return: the standard tier's ``process_source`` task arguments, slowest first (the large tier's are pushed as
        the XCom ``large``)
    """
    from openaddr.machine import batch_task_groups, plan_batch_set
    from openaddr_airflow import config
    from openaddr_airflow.operators import push_tiers

    with config.machine_engine() as engine:
        storage = config.machine_storage()
        planned = plan_batch_set(engine, storage, set_id)
        groups = batch_task_groups(engine, set_id, planned, storage=storage, slots=BATCH_MAX_ACTIVE_TASKS)
        return push_tiers(context["ti"], groups)


@task(trigger_rule="all_done", outlets=[LATEST_SET])
def complete_set(set_id: int) -> dict[str, int]:
    """Mark the set complete once every entry has finished (emits the ``openaddr://sets/latest`` asset).

    :param set_id: the set :func:`create_set` recorded
    :return: the set's run counts
    """
    from openaddr.machine import complete_batch_set
    from openaddr_airflow import config

    with config.machine_engine() as engine:
        return complete_batch_set(engine, set_id)


@task
def send_set_alerts(set_id: int) -> dict:
    """The set's summary to the maintainers (once) and the subscribers' break and recovery messages.

    :param set_id: the set :func:`complete_set` completed
    :return: the counts, whether the summary was sent (``off``: no alert connection), the subscribers' outcome
    """
    from openaddr.alerts import alert_set_complete
    from openaddr.db.runs import utcnow
    from openaddr_airflow import config
    from openaddr_airflow.alerts import NotifierSender

    with config.machine_engine() as engine:
        return alert_set_complete(engine, set_id, NotifierSender(), base_url=config.base_url(), now=utcnow())


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_BATCH, Tag.TIER_2, Tag.DATA_SOURCES],
    max_active_runs=1,
    max_active_tasks=BATCH_MAX_ACTIVE_DAG_TASKS,
    on_failure_callback=FailedRunNotifier(),
    default_args={**DEFAULT_ARGS, "queue": BATCH_QUEUE},
)
def openaddr_batch():
    """The nightly batch: create the set, process every entry, complete the set (see the module docstring)."""
    set_id = create_set()
    processed = process_sources(
        list_sources(set_id), priority_weight=1, max_active_standard=BATCH_MAX_ACTIVE_TASKS, release=True
    )
    processed >> complete_set(set_id) >> send_set_alerts(set_id)


openaddr_batch()
