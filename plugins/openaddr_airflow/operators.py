"""``ProcessSourceOperator``: one layer entry of a CI job or a batch set (machine-ci.md §5).

An operator rather than a ``@task`` because both DAGs map it and it carries the extra links.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, task
from airflow.sdk.exceptions import AirflowFailException

from openaddr_airflow.links import ResultsSiteLink, RunOutputsLink

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Context

#: Attempt settings of every Machine task (machine-ci.md §3.2: infrastructure errors are retried twice, with
#: exponential back-off). The first delay is ``[core] default_task_retry_delay`` (airflow.cfg: 15 s; a test stack
#: shortens it in its environment), so a task lost with its worker is queued again 15–30 s after the scheduler
#: detects the loss; the factor of 10 spaces a second failure 150–300 s further, near the original's 5 minutes, for
#: an outage that outlasts the first retry (Airflow waits ``delay × factor^(try − 1)`` to twice that, by a hash of
#: the task instance; docs/deploy.md, "A worker lost mid-run"). Source failures are recorded, never raised, so
#: never retried.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "openaddresses",
    "retries": 2,
    "retry_exponential_backoff": 10.0,
}
#: Pool of every ``process_source`` task: as many slots as the workers run tasks at once.
POOL = "oa_sources"
#: Pool and Celery queue of ``process_large_source``, the entries whose ``conform.size`` is ``large``: served by
#: workers with more memory and disk (``airflow celery worker --queues large``), as the original's large queue
#: (machine-ci.md §3.3).
LARGE_POOL = "oa_large"
#: The Celery queues (issue 16), each served by its own workers: ``ci`` the CI DAG's tasks, so that a CI run never
#: waits behind the nightly batch; ``batch`` the batch's and the other scheduled DAGs' tasks; ``large`` the large
#: entries of both (``process_large_source``). Each DAG names its queue in ``default_args``; ``[operators]
#: default_queue`` (airflow.cfg) sends anything else to ``batch``.
CI_QUEUE = "ci"
BATCH_QUEUE = "batch"
LARGE_QUEUE = "large"
QUEUES = (CI_QUEUE, BATCH_QUEUE, LARGE_QUEUE)
#: The mapped tasks, by entry tier.
TASK_IDS = {
    "standard": "process_source",
    "large": "process_large_source",
    "released": "process_released_source",
}
#: The XCom key under which a planning task sets the large-tier arguments apart.
LARGE_XCOM = "large"

#: Added to an entry's own deadline (enforced by killing the processing subprocess) for the hard stop of one
#: attempt: the delay of the original's *due* queue (machine-ci.md §3.1).
DEADLINE_GRACE = dt.timedelta(minutes=5)
#: The hard stop of an entry without its own ``timeout``: 3 hours plus the grace.
EXECUTION_TIMEOUT = dt.timedelta(hours=3) + DEADLINE_GRACE


class EntryTimedOut(AirflowFailException):
    """A ``process_source`` attempt reached its ``execution_timeout``: failed without retry, and recorded as
    "Timed out after …" by the run listener, which recognises it by this type
    (:func:`openaddr_airflow.listeners.timeout_of`)."""


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


def push_tiers(ti: Any, tiers: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """In a planning task: push the ``large`` tier's task arguments as the XCom ``large`` and return the standard
    ones, the task's return value that ``process_source`` maps over (Airflow maps over return values only).

    :param ti: the planning task's instance (``context["ti"]``)
    :param tiers: task arguments by tier (:func:`openaddr.machine.by_tier`,
        :func:`openaddr.machine.batch_task_groups`)
    """
    ti.xcom_push(key=LARGE_XCOM, value=list(tiers["large"]))
    return list(tiers["standard"])


def process_sources(
    planned: Any, *, priority_weight: int, max_active_standard: int | None = None, release: bool = False
) -> list[Any]:
    """The mapped processing tasks over a planning task's output (:func:`push_tiers`): ``process_source`` over the
    standard entries in pool :data:`POOL`; ``process_large_source`` over the large ones in pool :data:`LARGE_POOL`
    and queue :data:`LARGE_QUEUE`, by way of ``large_sources``, which returns the planning task's XCom ``large``.
    Both have an absolute priority weight and name each instance by its entry's label in the UI; a tier without
    entries maps to no instance (the task is skipped).

    :param planned: the XCom of a planning task
    :param priority_weight: 1000 for CI, 1 for the batch: a free slot always goes to CI first (machine-ci.md §3.3)
    :param max_active_standard: ``process_source`` instances one DAG run may run at once (the batch keeps two
        slots of :data:`POOL` for CI)
    :param release: the batch's groups have a group deadline: ``released_sources`` gathers the entries a group
        released once every ``process_source`` has ended, and ``process_released_source`` runs each in a task of
        its own (pool :data:`POOL`)
    :return: the mapped tasks
    """
    common = {
        "priority_weight": priority_weight,
        "weight_rule": "absolute",
        "execution_timeout": EXECUTION_TIMEOUT,
        "map_index_template": "{{ task.label }}",
    }
    standard = ProcessSourceOperator.partial(
        task_id=TASK_IDS["standard"], pool=POOL, max_active_tis_per_dagrun=max_active_standard, **common
    ).expand_kwargs(planned)
    tasks = [
        standard,
        ProcessSourceOperator.partial(
            task_id=TASK_IDS["large"], pool=LARGE_POOL, queue=LARGE_QUEUE, **common
        ).expand_kwargs(large_sources(planned[LARGE_XCOM])),
    ]
    if release:
        tasks.append(
            ProcessSourceOperator.partial(
                task_id=TASK_IDS["released"],
                pool=POOL,
                max_active_tis_per_dagrun=max_active_standard,
                **common,
            ).expand_kwargs(released_sources(standard.output))
        )
    return tasks


@task(task_id="released_sources", trigger_rule="all_done", priority_weight=1, weight_rule="absolute")
def released_sources(results: Any) -> list[dict[str, Any]]:
    """The entries the groups of ``process_source`` released at their group deadline
    (:func:`openaddr.machine.process_entries`), each the argument of a ``process_released_source`` task."""
    return [
        dict(argument)
        for result in results or []
        if isinstance(result, dict)
        for argument in result.get("released") or []
    ]


@task(task_id="large_sources", priority_weight=1000, weight_rule="absolute")
def large_sources(arguments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The large-tier arguments a planning task set apart, as a return value ``process_large_source`` can map."""
    return list(arguments or [])


class ProcessSourceOperator(BaseOperator):
    """Reuse or process one planned layer entry (CI), or a group of small ones in turn (the batch), publish the
    outputs and record one run per entry.

    Source failures are recorded and the task succeeds, so the DAG run's colour shows orchestration health; a
    task whose entries were all skipped ends as *skipped* after recording; infrastructure errors raise and are
    retried (a retried group keeps the entries an earlier attempt finished). A timeout is not retried: it is
    recorded as "Timed out after …" by the run listener.

    :param entry: a planned entry (:meth:`openaddr.machine.PlannedEntry.to_dict`)
    :param entries: instead of ``entry``, several, processed in turn (:func:`openaddr.machine.group_entries`)
    :param group_deadline: seconds after which a group releases the entries it has not started (see
        :func:`openaddr.machine.process_entries`)
    :param run_owner: the runs' job or set: ``{"kind": "ci"|"batch", "job_id", "set_id", "commit_sha", "rerun"}``
    """

    template_fields = ("entry", "entries", "run_owner")
    operator_extra_links = (RunOutputsLink(), ResultsSiteLink())
    ui_color = "#d8f0e0"

    def __init__(
        self,
        *,
        run_owner: Mapping[str, Any],
        entry: Mapping[str, Any] | None = None,
        entries: list[Mapping[str, Any]] | None = None,
        group_deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("execution_timeout", EXECUTION_TIMEOUT)
        super().__init__(**kwargs)
        if (entry is None) == (entries is None):
            raise ValueError(f"{self.task_id}: give either entry or entries")
        self.entry = entry
        self.entries = entries
        self.group_deadline = group_deadline
        self.run_owner = run_owner
        self.run_links: dict[str, str] = {}

    @property
    def planned(self) -> list[Mapping[str, Any]]:
        """The entries of this task instance, in slot order (rendered)."""
        if self.entries is not None:
            return list(self.entries)
        return [self.entry] if isinstance(self.entry, dict) else []

    @property
    def label(self) -> str:
        """How the UI names the mapped instance: the entry's label, or the first one's and how many follow."""
        labels = [str(entry.get("label", "?")) for entry in self.planned if isinstance(entry, dict)]
        if not labels:
            return ""
        return labels[0] if len(labels) == 1 else f"{labels[0]} + {len(labels) - 1} more"

    def pre_execute(self, context: Context) -> None:
        """The hard stop of this attempt follows the entries' own deadlines (their ``timeout`` hours, else
        3 hours; summed for a group), plus :data:`DEADLINE_GRACE`: the task runner reads it after this hook, once
        the entries are rendered."""
        seconds = [entry.get("timeout") for entry in self.planned if isinstance(entry, dict)]
        valid = [value for value in seconds if isinstance(value, (int, float)) and value > 0]
        # An execution_timeout the DAG gave explicitly wins.
        if self.execution_timeout == EXECUTION_TIMEOUT and valid and len(valid) == len(seconds):
            self.execution_timeout = dt.timedelta(seconds=sum(valid)) + DEADLINE_GRACE

    def execute(self, context: Context) -> dict[str, Any]:
        """Process the entries; return the run's summary (:func:`openaddr.machine.process_source`), or for a
        group ``{"runs": [summary, …], "succeeded": n, "failed": n, "skipped": n}``."""
        from airflow.sdk.exceptions import AirflowSkipException, AirflowTaskTimeout

        from openaddr.machine import RunOwner, process_entries
        from openaddr_airflow import config
        from openaddr_airflow.links import run_links

        config.settings()  # a malformed OPENADDR_* variable fails the task here, named
        storage = config.machine_storage()
        try:
            with config.machine_engine() as engine:
                results = process_entries(
                    engine,
                    storage,
                    self.planned,
                    RunOwner(**self.run_owner),
                    scratch=config.scratch_folder(),
                    task=airflow_task(context),
                    group_deadline=self.group_deadline if self.entries is not None else None,
                )
        except AirflowTaskTimeout as exc:
            raise EntryTimedOut(f"Timed out after {self.execution_timeout}") from exc
        released = [
            {"entry": result["entry"], "run_owner": dict(self.run_owner)}
            for result in results
            if result.get("released")
        ]
        for argument in released:
            self.log.info("%s: released to a task of its own (group deadline)", argument["entry"]["label"])
        results = [result for result in results if not result.get("released")]
        for result in results:
            self.log.info("%s: run %s, %s", result["label"], result["run_id"], result["message"])
        first = results[0]
        self.run_links = run_links(storage, first["run_id"], config.base_url(), published_by=first["copy_of"])
        if not released and all(result["skipped"] for result in results):
            runs = ", ".join(str(result["run_id"]) for result in results)
            raise AirflowSkipException(f"{self.label}: source says to skip (runs {runs})")
        if self.entries is None:
            return results[0]
        return {
            "runs": results,
            "succeeded": sum(1 for result in results if result["status"] is True and not result["skipped"]),
            "failed": sum(1 for result in results if result["status"] is False),
            "skipped": sum(1 for result in results if result["skipped"]),
            "released": released,
        }
