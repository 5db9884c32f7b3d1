"""The dequeuer as an Airflow listener (machine-ci.md §3): keeps runs, jobs and GitHub statuses right whatever
happens to a Machine task.

Task-instance events run in the task's own process on the worker, after the task body. For ``process_source``:

* **success / skipped**: the task recorded its run; the job is recomputed and its status posted;
* **failed, will retry**: the run stays pending (the next attempt resets it); nothing is posted;
* **failed for good**: the run fails with "Something went wrong in openaddr-process-one";
* **timed out**: the run fails with "Timed out after H:MM:SS", state null, and is never retried; a result that
  arrives later is dropped (:func:`openaddr.db.runs.finish_run`), so a late success never turns it green.

Every step is recomputed from the Machine database, so repeating it is harmless. A listener must never fail the
task: errors are logged.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

#: Tasks of CI DAGs (tag ``kind/ci``) whose end may change a job's status, besides ``process_source``.
JOB_TASKS = ("plan_job", "finish_job")


def is_process_task(task_instance: Any) -> bool:
    """Whether the task instance runs :class:`~openaddr_airflow.operators.ProcessSourceOperator`."""
    from openaddr_airflow.operators import ProcessSourceOperator

    return isinstance(getattr(task_instance, "task", None), ProcessSourceOperator)


def is_ci_task(task_instance: Any) -> bool:
    """Whether the task belongs to a CI DAG (tagged ``kind/ci``): its end may change a job's status."""
    from openaddr_airflow.tags import Tag

    dag = getattr(getattr(task_instance, "task", None), "dag", None)
    return Tag.KIND_CI.value in set(getattr(dag, "tags", None) or ())


def timeout_of(error: Any) -> bool:
    """Whether a task error is, or was raised because of, a timeout: Airflow's
    :class:`~airflow.sdk.exceptions.AirflowTaskTimeout` or the operator's
    :class:`~openaddr_airflow.operators.EntryTimedOut`, found by type along ``__cause__`` and ``__context__``
    (never by its text: a source's own "Timed out after …" is a source problem the task recorded).

    :param error: what Airflow hands the listener: the exception, a message (a state set by hand) or None
    """
    from airflow.sdk.exceptions import AirflowTaskTimeout

    from openaddr_airflow.operators import EntryTimedOut

    seen: list[BaseException] = []
    while isinstance(error, BaseException) and len(seen) < 10 and not any(error is e for e in seen):
        if isinstance(error, (AirflowTaskTimeout, EntryTimedOut)):
            return True
        seen.append(error)
        error = error.__cause__ or error.__context__
    return False


def die_with_supervisor() -> None:
    """Have the kernel SIGKILL this task runner when its parent, Airflow's supervisor in a Celery pool process,
    ends (:func:`openaddr.zygote.die_with_parent`).

    The supervisor puts the task runner in a process group of its own, so a worker killed with its process group
    (SIGKILL, a cold shutdown, a lost container) used to leave the runner, and below it ``process-one``, running
    as orphans that held the run's work folder and kept downloading (issue 16). Dying with the supervisor closes
    the zygote's stdin, and the zygote kills the processing child's group. Never fails the task: a system
    without the call is logged.

    Only in a task runner a supervisor forked: a task run in-process (``dag.test()``, its
    ``InProcessSupervisorComms``) has no supervisor, and its process's parent is a shell or a test runner.
    """
    from airflow.sdk.execution_time import task_runner

    from openaddr.zygote import die_with_parent

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None or type(comms).__name__.startswith("InProcess"):
        return
    try:
        die_with_parent()
    except OSError:
        log.warning("This task runner cannot be tied to its supervisor's life", exc_info=True)


class RunListener:
    """Task-instance listener of the Machine DAGs: records failures and timeouts, updates jobs, posts statuses and
    publishes the Machine-task metric."""

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        """A task started (in its task runner, before its body): tie the runner's life to its supervisor's; for a
        Machine task, publish the metric."""
        die_with_supervisor()
        if is_process_task(task_instance):
            self._publish_metric(task_instance)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        """The task recorded its run: recompute the job and post its status."""
        self._after(task_instance)

    @hookimpl
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        """A skipped entry recorded its run too."""
        self._after(task_instance)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        """Record a timeout or a final failure of ``process_source``; recompute the job and post its status."""
        if is_process_task(task_instance):
            from openaddr.db.retry import DatabaseUnavailable

            try:
                self.record_failure(task_instance, error)
            except DatabaseUnavailable as exc:
                # The database did not answer (one try for an attempt that will be retried, the budget for a
                # final one): the runs stay pending, and a next attempt records them. No traceback: it says why.
                log.warning("Could not record the failure of %s: %s", task_instance, exc)
            except Exception:
                log.exception("Could not record the failure of %s", task_instance)
        self._after(task_instance)

    # -- the steps, each usable on its own ----------------------------------------------------------------------

    def record_failure(self, task_instance: Any, error: Any) -> list[dict[str, Any]]:
        """Record what a failed ``process_source`` attempt means for its runs (every entry of a batch group);
        return them."""
        from openaddr.db.retry import Retry, budget_seconds
        from openaddr.db.runs import AirflowTask
        from openaddr.machine import RunOwner, record_task_failure
        from openaddr_airflow import config
        from openaddr_airflow.operators import EXECUTION_TIMEOUT

        task = AirflowTask(
            dag_id=task_instance.dag_id,
            dag_run_id=task_instance.run_id,
            task_id=task_instance.task_id,
            map_index=task_instance.map_index if task_instance.map_index is not None else -1,
            try_number=task_instance.try_number or 1,
        )
        operator = getattr(task_instance, "task", None)
        timed_out = timeout_of(error)
        limit = getattr(operator, "execution_timeout", None) or EXECUTION_TIMEOUT
        state = getattr(task_instance, "state", None)
        final = getattr(state, "value", state) != "up_for_retry"
        entries = getattr(operator, "entries", None) or []
        run_owner = getattr(operator, "run_owner", None)
        owner = RunOwner(**run_owner) if entries and isinstance(run_owner, dict) else None
        log.info("%s failed (timeout: %s, final: %s): %s", task, timed_out, final, error)
        # A final failure or a timeout must reach the database (else the run stays pending for ever): ride out an
        # outage as a task does. An attempt that will be retried leaves its runs pending anyway: one try.
        db = Retry(budget_seconds() if final or timed_out else 0.0)
        with config.machine_engine() as engine:
            return db(
                record_task_failure,
                engine,
                task,
                timeout=limit if timed_out else None,
                final=final or timed_out,
                now=dt.datetime.now(dt.UTC),
                entries=entries if isinstance(entries, list) else [],
                owner=owner,
            )

    def _after(self, task_instance: Any) -> None:
        process = is_process_task(task_instance)
        if process:
            self._publish_metric(task_instance)
        if is_ci_task(task_instance) and (process or task_instance.task_id in JOB_TASKS):
            try:
                self.post_job_status(_job_id(task_instance))
            except Exception:
                log.exception("Could not update the job of %s", task_instance)

    def post_job_status(self, job_id: str | None) -> bool:
        """Recompute a job and post its commit status when it has a status URL and statuses are not gagged; once
        the job is finished, check whether its commit is merged and post or update its pull-request comment
        (:meth:`job_finished`).

        :return: whether a status was posted
        """
        from openaddr.db.jobs import get_job, update_job
        from openaddr_airflow import config

        if not job_id:
            return False
        with config.machine_engine() as engine:
            if get_job(engine, job_id) is None:
                # A trigger that could not be planned: plan_job failed with the reason, there is nothing to post.
                log.info("Job %s was never planned: no status to post", job_id)
                return False
            job = update_job(engine, job_id)
            posted = self._post_status(job)
            if job.get("datetime_end") is not None:
                self.job_finished(engine, job)
        return posted

    def job_finished(self, engine: Any, job: dict[str, Any]) -> int | None:
        """A job whose runs are all recorded: record whether its commit is on the default branch (§2.4) and,
        unless statuses are gagged, post or update its pull-request comment (§2.3). GitHub errors never fail the
        job: they are logged (and the comment's recorded on the job).

        :return: the comment's id, or None when none was posted
        """
        from openaddr.machine.comments import post_job_comment
        from openaddr.machine.merged import check_job_merged
        from openaddr_airflow import config

        wanted = job.get("github_owner") or job.get("github_comments_url")
        client = config.github_client() if wanted else None
        if client is None:
            if wanted:
                log.warning("Job %s: connection %s is not configured", job["id"], config.GITHUB_CONN_ID)
            return None
        try:
            check_job_merged(engine, client, job["id"])
        except Exception:
            log.exception("Could not record whether job %s is merged", job["id"])
        if not job.get("github_comments_url") or config.github_gagged():
            return None
        return post_job_comment(
            engine, client, job["id"], base_url=config.base_url(), airflow_url=config.airflow_ui_url()
        )

    def _post_status(self, job: dict[str, Any]) -> bool:
        from openaddr.github import job_commit_status, post_commit_status
        from openaddr_airflow import config

        job_id = job["id"]
        if not job.get("github_status_url") or config.github_gagged():
            return False
        client = config.github_client()
        if client is None:
            log.warning(
                "Job %s has a status URL but connection %s is not configured", job_id, config.GITHUB_CONN_ID
            )
            return False
        site = config.base_url()
        status = job_commit_status(job, f"{site}/jobs/{job_id}" if site else None)
        return post_commit_status(
            client, job["github_status_url"], status, context=config.github_status_context()
        )

    def _publish_metric(self, task_instance: Any) -> None:
        from openaddr_airflow import config
        from openaddr_airflow.metrics import count_machine_tasks, publish_machine_tasks

        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            counts = count_machine_tasks(RuntimeTaskInstance, [task_instance.dag_id])
        except Exception:
            log.debug("Machine-task count not available here", exc_info=True)
            return
        publish_machine_tasks(counts, namespace=config.cloudwatch_namespace())


def _job_id(task_instance: Any) -> str | None:
    """The job of a CI DAG run (:func:`openaddr.machine.ci_owner` of its conf)."""
    from openaddr.machine import ci_owner

    conf: dict[str, Any] = {}
    try:
        conf = dict(task_instance.get_template_context()["dag_run"].conf or {})
    except Exception:
        log.debug("No DAG-run conf for %s", task_instance, exc_info=True)
    return ci_owner(conf, task_instance.run_id).job_id


run_listener = RunListener()
