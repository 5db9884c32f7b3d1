"""The worker-pool metric: how many Machine tasks are queued or running (machine-ci.md §3.2).

The original dequeuer sent its queue lengths to CloudWatch every 30 s and an autoscaler grew the worker group when
the ``tasks queue`` stayed high. Here the count of ``process_source`` task instances that are queued or running
is published on every Machine task event: to CloudWatch through the Amazon provider when a namespace is
configured, else to the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)

#: DAGs whose ``process_source`` tasks count.
MACHINE_DAGS = ("openaddr_ci", "openaddr_batch")
#: The task that counts.
TASK_ID = "process_source"
#: The metric's name.
METRIC_NAME = "MachineTasks"
#: Task instance states that count: waiting for a slot or a worker, or working.
ACTIVE_STATES = ("scheduled", "queued", "running")


def count_machine_tasks(ti_class: Any, extra_dag_ids: Iterable[str] = ()) -> int:
    """Queued plus running ``process_source`` instances over :data:`MACHINE_DAGS` (and ``extra_dag_ids``), through
    the Execution API.

    :param ti_class: the task SDK's ``RuntimeTaskInstance`` (its ``get_ti_count``)
    :param extra_dag_ids: other DAGs that run ``process_source`` (the DAG of the task reporting)
    """
    return sum(
        ti_class.get_ti_count(dag_id=dag_id, task_ids=[TASK_ID], states=list(ACTIVE_STATES))
        for dag_id in sorted({*MACHINE_DAGS, *extra_dag_ids})
    )


def publish_machine_tasks(count: int, *, namespace: str | None, aws_conn_id: str = "aws_default") -> None:
    """Publish the count: a CloudWatch metric in ``namespace`` (dimension-less, unit Count), and always a log line.

    Errors are logged, never raised: a metric must not fail a task.
    """
    log.info("openaddr metric %s=%d", METRIC_NAME, count)
    if not namespace:
        return
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        client = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="cloudwatch").get_conn()
        client.put_metric_data(
            Namespace=namespace,
            MetricData=[{"MetricName": METRIC_NAME, "Value": float(count), "Unit": "Count"}],
        )
    except Exception:
        log.exception("Could not publish %s to CloudWatch namespace %s", METRIC_NAME, namespace)
