"""``ProcessSourceOperator``: one layer entry of a CI job or a batch set (machine-ci.md §5).

An operator rather than a ``@task`` because both DAGs map it and it carries the extra links.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from openaddr_airflow.links import ResultsSiteLink, RunOutputsLink

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Context

#: Attempt settings of every Machine task (machine-ci.md §3.2: infrastructure errors are retried twice, 5 min apart,
#: with exponential back-off).
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "openaddresses",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
    "retry_exponential_backoff": 2.0,
}
#: Pool of every ``process_source`` task: as many slots as the workers run tasks at once.
POOL = "oa_sources"

#: The hard stop of one attempt: the entries' 3-hour deadline (enforced by killing the processing subprocess)
#: plus five minutes, the delay of the original's *due* queue (machine-ci.md §3.1).
EXECUTION_TIMEOUT = dt.timedelta(hours=3, minutes=5)


def airflow_task(context: Mapping[str, Any]) -> Any:
    """The :class:`openaddr.db.runs.AirflowTask` of the running task instance."""
    from openaddr.db.runs import AirflowTask

    ti = context["ti"]
    return AirflowTask(
        dag_id=ti.dag_id,
        dag_run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=ti.map_index if ti.map_index is not None else -1,
        try_number=ti.try_number or 1,
    )


def process_sources(arguments: Any, *, priority_weight: int) -> Any:
    """``process_source`` mapped over the planned arguments (``{"entry", "run_owner"}`` each), in pool
    :data:`POOL` with an absolute priority weight, each instance named by its entry's label in the UI.

    :param arguments: the XCom of a planning task
    :param priority_weight: 1000 for CI, 1 for the batch: a free slot always goes to CI first (machine-ci.md §3.3)
    """
    return ProcessSourceOperator.partial(
        task_id="process_source",
        pool=POOL,
        execution_timeout=EXECUTION_TIMEOUT,
        priority_weight=priority_weight,
        weight_rule="absolute",
        map_index_template="{{ task.entry['label'] }}",
    ).expand_kwargs(arguments)


class ProcessSourceOperator(BaseOperator):
    """Reuse or process one planned layer entry, publish its outputs and record its run.

    Source failures are recorded and the task succeeds, so the DAG run's colour shows orchestration health; a
    skipped entry ends the task as *skipped* after recording; infrastructure errors raise and are retried. A
    timeout is not retried: it is recorded as "Timed out after …" by the run listener.

    :param entry: a planned entry (:meth:`openaddr.machine.PlannedEntry.to_dict`)
    :param run_owner: the run's job or set: ``{"kind": "ci"|"batch", "job_id", "set_id", "commit_sha", "rerun"}``
    """

    template_fields = ("entry", "run_owner")
    operator_extra_links = (RunOutputsLink(), ResultsSiteLink())
    ui_color = "#d8f0e0"

    def __init__(self, *, entry: Mapping[str, Any], run_owner: Mapping[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("execution_timeout", EXECUTION_TIMEOUT)
        super().__init__(**kwargs)
        self.entry = entry
        self.run_owner = run_owner
        self.run_links: dict[str, str] = {}

    def execute(self, context: Context) -> dict[str, Any]:
        """Process the entry; return the run's summary (:func:`openaddr.machine.process_source`)."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, AirflowTaskTimeout

        from openaddr.machine import RunOwner, process_source
        from openaddr.storage import run_prefix
        from openaddr_airflow import config

        storage = config.machine_storage()
        try:
            result = process_source(
                config.machine_engine(),
                storage,
                self.entry,
                RunOwner(**self.run_owner),
                scratch=config.scratch_folder(),
                task=airflow_task(context),
            )
        except AirflowTaskTimeout as exc:
            raise AirflowFailException(f"Timed out after {self.execution_timeout}") from exc
        self.run_links = {"outputs": storage.url(f"{run_prefix(result['run_id'])}/index.json")}
        site = config.base_url()
        if site:
            self.run_links["site"] = f"{site}/runs/{result['run_id']}/"
        self.log.info("%s: run %s, %s", result["label"], result["run_id"], result["message"])
        if result["skipped"]:
            raise AirflowSkipException(f"{result['label']}: source says to skip (run {result['run_id']})")
        return result
