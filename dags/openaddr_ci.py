"""
### OpenAddresses CI: check the source files a GitHub push or pull request changed

Triggered by the webhook (no schedule) with the conf

```json
{"job_id": "…", "commit_sha": "…", "rerun": false, "event": "pull_request", "delivery_id": "…",
 "sources": [{"path": "sources/us/wy/park.json", "blob_sha": "…", "content_b64": "…"}],
 "github": {"status_url": "…", "comments_url": "…", "owner": "…", "repository": "…"}}
```

(`content` may replace `content_b64`; only `sources` is required.) The conf is declared as Params with a JSON
schema: the trigger form shows a template, and a malformed conf is refused before a run exists. A conf that still
cannot be planned fails the run at once, without retries.

1. **plan_job** records the job (unless the webhook did), stores the files under `jobs/<job id>/sources/` and expands
   them into layer entries; invalid files are recorded as failed runs (`invalid_source`).
2. **process_source**, one mapped instance per entry, named `source/layer/name`: reuses a run of the last 10 days
   of the same entry, or downloads and conforms it in a subprocess (3-hour deadline), publishes `runs/<run id>/` and
   records the run. Source failures are recorded, not raised. High priority: CI always starts before the batch.
   Entries with `conform.size: large` run as **process_large_source** on the large workers (pool `oa_large`).
3. **finish_job** (runs whatever happened upstream) computes the job status; the DAG run fails when a file failed.

The run listener posts the GitHub commit statuses (pending, failure, success). Extra links on each instance lead to
the run's outputs and its results page. Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from openaddr_airflow.operators import CI_QUEUE, DEFAULT_ARGS, process_sources
from openaddr_airflow.params import CI_PARAMS
from openaddr_airflow.tags import Tag


@task
def plan_job(**context) -> list[dict]:
    """Record the CI job of the trigger's conf and plan its layer entries.

    A conf that cannot be planned fails the run at once (no retries) with a message saying why.

    :return: the standard tier's ``process_source`` task arguments (the large tier's are pushed as the XCom
        ``large``)
    """
    from airflow.sdk.exceptions import AirflowFailException

    from openaddr.machine import TriggerError, by_tier, plan_ci_job
    from openaddr_airflow import config
    from openaddr_airflow.operators import push_tiers

    try:
        with config.machine_engine() as engine:
            planned = plan_ci_job(
                engine, config.machine_storage(), context["dag_run"].conf or {}, dag_run_id=context["run_id"]
            )
    except TriggerError as exc:
        raise AirflowFailException(f"Cannot plan this trigger: {exc}") from exc
    return push_tiers(context["ti"], by_tier(planned))


@task(trigger_rule="all_done")
def finish_job(**context) -> bool | None:
    """Recompute the job's file states and status from its runs; fail the task when a file failed.

    :return: the job's status when it did not fail: True (every file passed) or None (not decided)
    """
    from airflow.sdk.exceptions import AirflowFailException

    from openaddr.machine import TriggerError, ci_owner, finish_ci_job
    from openaddr_airflow import config

    try:
        with config.machine_engine() as engine:
            job = finish_ci_job(engine, ci_owner(context["dag_run"].conf or {}, context["run_id"]).job_id)
    except TriggerError as exc:
        raise AirflowFailException(str(exc)) from exc
    if job["status"] is False:
        failed = sorted(path for path, state in job["file_states"].items() if state is False)
        raise AirflowFailException(f"Job {job['id']} failed on {', '.join(failed)}")
    return job["status"]


@dag(
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_CI, Tag.TIER_1, Tag.DATA_SOURCES],
    max_active_runs=16,
    default_args={**DEFAULT_ARGS, "queue": CI_QUEUE},
    params=CI_PARAMS,
)
def openaddr_ci():
    """A CI job: plan the trigger's sources, process every entry, finish the job (see the module docstring)."""
    planned = plan_job()
    processed = process_sources(planned, priority_weight=1000)
    processed >> finish_job()


openaddr_ci()
