"""
### OpenAddresses merged work: which CI runs are on the default branch

Daily. A run of a CI job counts as *merged* once its commit is reachable from its repository's default branch
(machine-ci.md §2.4); only merged runs (and every run of a set) feed the results site's "latest" pages, the
collections and the health page. Each job's commit is checked when its runs are recorded; this DAG rechecks the job
runs of the **last 30 days** whose `is_merged` is not true, with one GitHub compare
(`<default branch>...<commit>`: `behind` or `identical` → merged; `ahead` or `diverged` → not yet) per distinct
owner, repository and commit, so a pull request merged after its check counts from the next day on.

1. **refresh_merged** asks GitHub through the connection `github_openaddresses` and updates `runs.is_merged` in the
   Machine database (`openaddr_machine_db`). A commit GitHub cannot answer for is left as it was and logged, never
   guessed; when GitHub answers none of them the task fails and is retried.

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from openaddr_airflow.alerts import FailedRunNotifier
from openaddr_airflow.operators import BATCH_QUEUE, DEFAULT_ARGS
from openaddr_airflow.tags import Tag


@task
def refresh_merged() -> dict:
    """Recheck the last 30 days' job runs not known to be merged; return the counts."""
    import dataclasses

    from openaddr.machine.merged import refresh_merged as recheck
    from openaddr_airflow import config

    client = config.github_client()
    if client is None:
        raise config.MissingConfiguration(f"GitHub is not configured: connection {config.GITHUB_CONN_ID}")
    with config.machine_engine() as engine:
        return dataclasses.asdict(recheck(engine, client))


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_MAINTENANCE, Tag.TIER_2],
    default_args={**DEFAULT_ARGS, "queue": BATCH_QUEUE},
    on_failure_callback=FailedRunNotifier(),
)
def openaddr_refresh_merged():
    """Recheck which CI runs are merged (see the module docstring)."""
    refresh_merged()


openaddr_refresh_merged()
