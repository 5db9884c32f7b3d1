"""
### OpenAddresses housekeeping: delete old runs and their files

Weekly. The original Machine kept every run: its `runs` table reached about a million rows and slowed the results
site (openaddresses/machine#777). **sweep_runs** deletes the runs recorded more than `OPENADDR_RETENTION_DAYS`
(**90** by default) ago, each with its files under `runs/<id>/` in the run storage (`openaddr_results`) and its
rows in the Machine database (`openaddr_machine_db`: the run and its `run_reviews`), in batches of 500 runs, one
transaction each.

**Kept**, whatever their age:

* the **latest** run of each layer entry (path, layer, name) by every definition the site uses: the newest run,
  the newest merged run, and the newest merged accepted successful run (the entry's "latest" URL);
* the input runs of the **collections**: those of the latest completed set, and of the set the current
  collections (`zips`) were built from;
* runs another run **copies** (`copy_of`: the copy's links point at the original's files);
* runs **held for review** by the quality gate;
* runs of a set or job that is **still running**.

Rows go first, then files: a storage error while listing a batch stops the sweep with its rows and files kept; one
while deleting files leaves those files without a row (named in the error) rather than a row whose files are gone.
The task returns the counts: runs, files and bytes deleted, old runs kept by rule. `openaddr housekeeping
--dry-run` shows the same counts without deleting anything. Rules and order: `openaddr/housekeeping.py`.

A failed scheduled run of this DAG is an alert to the maintainers (`on_failure_callback`, machine-ci.md §11).

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from openaddr_airflow.alerts import FailedRunNotifier
from openaddr_airflow.operators import BATCH_QUEUE, DEFAULT_ARGS
from openaddr_airflow.tags import Tag


@task
def sweep_runs() -> dict:
    """Delete the runs past retention that no rule keeps, with their files; return the counts."""
    import datetime as dt

    from openaddr.db.runs import utcnow
    from openaddr.housekeeping import sweep
    from openaddr_airflow import config

    retention = dt.timedelta(days=config.settings().retention_days)
    storage = config.machine_storage()
    with config.machine_engine() as engine:
        return sweep(engine, storage, now=utcnow(), retention=retention).as_dict()


@dag(
    schedule="@weekly",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_MAINTENANCE, Tag.TIER_2],
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "queue": BATCH_QUEUE},
    on_failure_callback=FailedRunNotifier(),
)
def openaddr_housekeeping():
    """Delete old runs and their files (see the module docstring)."""
    sweep_runs()


openaddr_housekeeping()
