"""DAGs for the run listener's tests (part of the test session's DAG bundle only, never of ``dags/``).

Each runs one ``process_source`` task for the entry and owner given in the DAG run's conf (rendered as native
objects), with the attempt settings its test needs; two operators fail on purpose, and ``machine_unconfigured`` runs on a
worker without the Machine's configuration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.sdk import DAG

from openaddr_airflow.operators import ProcessSourceOperator, airflow_task


class FlakyProcessSource(ProcessSourceOperator):
    """Loses its worker after recording the run, on the first attempt only."""

    def execute(self, context: Any) -> dict[str, Any]:
        result = super().execute(context)
        if context["ti"].try_number == 1:
            raise OSError("lost the connection to the worker")
        return result


class CrashingProcessSource(ProcessSourceOperator):
    """Reserves its run as ``process_source`` does, then dies: an infrastructure error on every attempt."""

    def execute(self, context: Any) -> dict[str, Any]:
        from openaddr.db.runs import insert_run
        from openaddr_airflow import config

        with config.machine_engine() as engine:
            insert_run(
                engine,
                source_path=self.entry["path"],
                source_layer=self.entry["layer"],
                layer_name=self.entry["name"],
                job_id=self.run_owner.get("job_id"),
                task=airflow_task(context),
            )
        raise RuntimeError("storage unreachable")


def one_task_dag(
    dag_id: str, operator: type[ProcessSourceOperator], tags: list[str], *, group: bool = False, **kwargs: Any
) -> None:
    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        tags=tags,
        render_template_as_native_obj=True,
    ):
        planned = (
            {"entries": "{{ dag_run.conf['entries'] }}"}
            if group
            else {"entry": "{{ dag_run.conf['entry'] }}"}
        )
        operator(task_id="process_source", run_owner="{{ dag_run.conf['run_owner'] }}", **planned, **kwargs)


one_task_dag(
    "listener_timeout",
    ProcessSourceOperator,
    ["kind/batch"],
    execution_timeout=dt.timedelta(seconds=4),
    retries=2,
    retry_delay=dt.timedelta(0),
)
one_task_dag(
    "listener_group_timeout",
    ProcessSourceOperator,
    ["kind/batch"],
    group=True,
    execution_timeout=dt.timedelta(seconds=20),
    retries=2,
    retry_delay=dt.timedelta(0),
)
one_task_dag("listener_retry", FlakyProcessSource, ["kind/batch"], retries=1, retry_delay=dt.timedelta(0))
one_task_dag("listener_crash", CrashingProcessSource, ["kind/ci"], retries=0)
one_task_dag("listener_metric", ProcessSourceOperator, ["kind/batch"], retries=0)
# Retries allowed, without delay: a configuration error must fail it at once all the same.
one_task_dag(
    "machine_unconfigured", ProcessSourceOperator, ["kind/ci"], retries=2, retry_delay=dt.timedelta(0)
)
