"""The worker-pool metrics: how many Machine tasks are queued or running, per tier (machine-ci.md §3.2).

The original dequeuer sent its queue lengths to CloudWatch every 30 s and an autoscaler grew the worker group when
the ``tasks queue`` stayed high. Here the count of ``process_source`` task instances that are scheduled, queued or
running (``MachineTasks``, for the standard worker group) and of ``process_large_source`` ones
(``MachineLargeTasks``, for the large-tier group) are published on every Machine task event: to CloudWatch through
the Amazon provider when a namespace is configured, else to the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from mypy_boto3_cloudwatch import CloudWatchClient

log = logging.getLogger(__name__)

#: DAGs whose processing tasks count.
MACHINE_DAGS = ("openaddr_ci", "openaddr_batch")
#: The metric of each counted task: one per worker group.
METRICS = {"process_source": "MachineTasks", "process_large_source": "MachineLargeTasks"}
#: Task instance states that count: waiting for a slot or a worker, or working.
ACTIVE_STATES = ("scheduled", "queued", "running")


def count_machine_tasks(ti_class: Any, extra_dag_ids: Iterable[str] = ()) -> dict[str, int]:
    """Scheduled, queued or running processing task instances over :data:`MACHINE_DAGS` (and
    ``extra_dag_ids``), through the Execution API, by metric name (:data:`METRICS`).

    :param ti_class: the task SDK's ``RuntimeTaskInstance`` (its ``get_ti_count``)
    :param extra_dag_ids: other DAGs that run processing tasks (the DAG of the task reporting)
    """
    dag_ids = sorted({*MACHINE_DAGS, *extra_dag_ids})
    return {
        metric: sum(
            ti_class.get_ti_count(dag_id=dag_id, task_ids=[task_id], states=list(ACTIVE_STATES))
            for dag_id in dag_ids
        )
        for task_id, metric in METRICS.items()
    }


def publish_machine_tasks(
    counts: Mapping[str, int], *, namespace: str | None, aws_conn_id: str = "aws_default"
) -> None:
    """Publish the counts: CloudWatch metrics in ``namespace`` (dimension-less, unit Count), and always a log line.

    Errors are logged, never raised: a metric must not fail a task.
    """
    log.info("openaddr metrics %s", " ".join(f"{name}={count}" for name, count in counts.items()))
    if not namespace:
        return
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        client: CloudWatchClient = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="cloudwatch").get_conn()
        client.put_metric_data(
            Namespace=namespace,
            MetricData=[
                {"MetricName": name, "Value": float(count), "Unit": "Count"} for name, count in counts.items()
            ],
        )
    except Exception:
        log.exception("Could not publish %s to CloudWatch namespace %s", ", ".join(counts), namespace)
