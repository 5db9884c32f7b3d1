"""Jobs (CI checks) and sets (batches) in the Machine database (machine-ci.md §2.1 step 10, §5 step 6, §6).

A job's file states and status are never written piecemeal: :func:`update_job` recomputes them from the job's runs
each time, so the ``process_source`` task and the listener plugin may both call it, in any order, any number of
times. The entries planned for each file are kept in ``file_results`` so that a file stays pending until every one of
its entries has a run with a status.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.runs import OK_MESSAGE, Bind, transaction, utcnow
from openaddr.db.schema import jobs, row_dict, runs, sets

if TYPE_CHECKING:
    import datetime as dt

log = logging.getLogger(__name__)

#: A planned layer entry of a file: (layer type, name).
Entry = tuple[str, str]


# --------------------------------------------------------------------------------------------------------------
# Status rules (§5 step 6)
# --------------------------------------------------------------------------------------------------------------


def file_state(statuses: Iterable[bool | None]) -> bool | None:
    """The state of one file from the statuses of its entries' runs: false if any is false, else null while any is
    null (pending), else true. A file with no entries at all has nothing to fail: true.
    """
    values = list(statuses)
    if False in values:
        return False
    if None in values:
        return None
    return True


def job_status(file_states: Mapping[str, bool | None]) -> bool | None:
    """The job's status from its file states: false if any file is false (a failure shows at once, while other
    files still run), null if any is pending, else true (7.5.5 ``update_job_status``).
    """
    return file_state(file_states.values())


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------


def create_job(
    bind: Bind,
    *,
    task_files: Mapping[str, str],
    job_id: str | None = None,
    github_owner: str | None = None,
    github_repository: str | None = None,
    github_status_url: str | None = None,
    github_comments_url: str | None = None,
    github_delivery_id: str | None = None,
    github_event: str | None = None,
    is_rerun: bool = False,
    airflow_dag_run_id: str | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Insert a job with every file pending (§2.1 step 10); return its id.

    :param task_files: ``{blob sha: path}`` of the changed source files
    :param job_id: the id (default: a random UUID4)
    :param github_delivery_id: ``X-GitHub-Delivery`` (unique: a redelivery finds the job, :func:`job_by_delivery`)
    :param is_rerun: the job answers a re-run request (reuse is bypassed)
    :param airflow_dag_run_id: the ``ci_job`` DAG run, e.g. ``ci__<job id>``
    :param now: ``datetime_start`` (default: now)
    :raises sqlalchemy.exc.IntegrityError: the id or delivery id is already recorded
    """
    job_id = job_id or str(uuid.uuid4())
    paths = sorted(set(task_files.values()))
    with transaction(bind) as connection:
        sequence = _next_job_sequence(connection)
        connection.execute(
            sa.insert(jobs).values(
                id=job_id,
                status=None,
                task_files=dict(task_files),
                file_states={path: None for path in paths},
                file_results={path: None for path in paths},
                github_owner=github_owner,
                github_repository=github_repository,
                github_status_url=github_status_url,
                github_comments_url=github_comments_url,
                github_delivery_id=github_delivery_id,
                github_event=github_event,
                is_rerun=is_rerun,
                airflow_dag_run_id=airflow_dag_run_id,
                datetime_start=now or utcnow(),
                sequence=sequence,
            )
        )
    log.info("Created job %s (%d files)", job_id, len(paths))
    return job_id


#: PostgreSQL's source of ``jobs.sequence`` numbers (migration 0007).
JOB_SEQUENCE = "jobs_sequence_seq"


def _next_job_sequence(connection: sa.Connection) -> Any:
    """The ``sequence`` of a new job: on PostgreSQL ``nextval`` (an SQL expression, evaluated by the insert; no lock
    held to the commit, so concurrent jobs do not wait for each other; a rolled-back job leaves a gap, and numbers
    follow the inserts, not the commits); on SQLite MAX + 1, its transactions here beginning IMMEDIATE
    (:func:`openaddr.db.make_engine`), which serialises writers until the commit anyway."""
    if connection.dialect.name == "postgresql":
        return sa.func.nextval(JOB_SEQUENCE)
    return connection.execute(sa.select(sa.func.coalesce(sa.func.max(jobs.c.sequence), 0) + 1)).scalar_one()


def get_job(bind: Bind, job_id: str) -> dict[str, Any] | None:
    """One job as a dict of its columns, or None."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    return row_dict(row) if row is not None else None


def job_by_delivery(bind: Bind, delivery_id: str) -> dict[str, Any] | None:
    """The job recorded for a GitHub delivery id (§2.1 step 4), or None."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(jobs).where(jobs.c.github_delivery_id == delivery_id)).first()
    return row_dict(row) if row is not None else None


def update_job(
    bind: Bind,
    job_id: str,
    *,
    planned: Mapping[str, Sequence[Entry]] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Recompute a job's file states, results and status from its runs (§5 step 6); return the updated job.

    Per file, every planned entry counts — an entry without a run yet is pending — and so does any run of the job
    for that file; the newest run of an entry stands. ``file_results[path]`` becomes ``{"message", "entries",
    "planned"}``, the message being the first failing entry's message, "Everything is fine" when all succeeded, else null; each
    entry is ``{"layer", "name", "run_id", "status", "message", "source_problem", "warning", "reused_run"}``.
    A file whose entries are not yet known stays pending. ``datetime_end`` is set when no file is pending any more
    (and cleared if one becomes pending again, e.g. a retried attempt).

    :param job_id: the job
    :param planned: ``{path: [(layer, name), …]}`` of the entries ``plan_job`` expanded; stored for later calls
    :param now: the end time to record (default: now)
    :raises LookupError: no job has this id
    """
    with transaction(bind) as connection:
        # Concurrent updates of one job recompute in turn, each seeing the runs the other committed.
        job = connection.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        job_run_rows = connection.execute(
            sa.select(
                runs.c.id,
                runs.c.source_path,
                runs.c.source_layer,
                runs.c.layer_name,
                runs.c.status,
                runs.c.message,
                runs.c.source_problem,
                runs.c.warning,
                runs.c.copy_of,
            )
            .where(runs.c.job_id == job_id)
            .order_by(runs.c.id)
        ).all()
        old_results: Mapping[str, Any] = job.file_results or {}
        newest: dict[str, dict[Entry, Any]] = {}
        for row in job_run_rows:  # in id order: the newest run of an entry ends up last
            newest.setdefault(row.source_path, {})[(row.source_layer, row.layer_name)] = row
        paths = sorted(
            set(job.file_states or {})
            | set((job.task_files or {}).values())
            | set(planned or {})
            | set(newest)
        )

        file_states: dict[str, bool | None] = {}
        file_results: dict[str, Any] = {}
        for path in paths:
            if planned is not None and path in planned:
                plan: list[Entry] | None = [(str(layer), str(name)) for layer, name in planned[path]]
            else:
                plan = _stored_plan(old_results.get(path))
            found = newest.get(path, {})
            if plan is None and not found:
                file_states[path] = None
                file_results[path] = None
                continue
            keys = list(plan or [])
            keys += [key for key in found if key not in keys]
            entries = [_entry_result(key, found.get(key)) for key in keys]
            state = file_state(entry["status"] for entry in entries)
            file_states[path] = state
            file_results[path] = {
                "message": _file_message(entries, state),
                "entries": entries,
                "planned": plan is not None,
            }

        status = job_status(file_states)
        pending = None in file_states.values()
        datetime_end = None if pending else (job.datetime_end or now or utcnow())
        connection.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                file_states=file_states, file_results=file_results, status=status, datetime_end=datetime_end
            )
        )
        updated = connection.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
    log.info("Job %s: status %s", job_id, status)
    return row_dict(updated)


def _stored_plan(result: Any) -> list[Entry] | None:
    if not isinstance(result, Mapping) or not result.get("planned"):
        return None
    return [(entry["layer"], entry["name"]) for entry in result.get("entries") or []]


def _entry_result(key: Entry, row: Any) -> dict[str, Any]:
    layer, name = key
    if row is None:
        return {
            "layer": layer,
            "name": name,
            "run_id": None,
            "status": None,
            "message": None,
            "source_problem": None,
            "warning": None,
            "reused_run": None,
        }
    return {
        "layer": layer,
        "name": name,
        "run_id": row.id,
        "status": row.status,
        "message": row.message,
        "source_problem": row.source_problem,
        "warning": row.warning,
        "reused_run": row.copy_of,
    }


def _file_message(entries: list[dict[str, Any]], state: bool | None) -> str | None:
    if state is False:
        message: str | None = next(entry["message"] for entry in entries if entry["status"] is False)
        return message
    return OK_MESSAGE if state is True else None


# --------------------------------------------------------------------------------------------------------------
# Sets (§6)
# --------------------------------------------------------------------------------------------------------------


def create_set(
    bind: Bind,
    *,
    owner: str,
    repository: str,
    commit_sha: str | None,
    airflow_dag_run_id: str | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Insert a set starting now (§6 ``create_set``); return its id.

    A set already recorded for ``airflow_dag_run_id`` (a retried task) is returned instead.

    :param owner: GitHub owner, e.g. ``openaddresses``
    :param repository: GitHub repository, e.g. ``openaddresses``
    :param commit_sha: head commit of the default branch
    :param airflow_dag_run_id: the ``batch_set`` DAG run
    :param now: ``datetime_start`` (default: now)
    """
    with transaction(bind) as connection:
        if airflow_dag_run_id is not None:
            existing = connection.execute(
                sa.select(sets.c.id).where(sets.c.airflow_dag_run_id == airflow_dag_run_id)
            ).scalar_one_or_none()
            if existing is not None:
                return int(existing)
        set_id = connection.execute(
            sa.insert(sets)
            .values(
                owner=owner,
                repository=repository,
                commit_sha=commit_sha,
                airflow_dag_run_id=airflow_dag_run_id,
                datetime_start=now or utcnow(),
            )
            .returning(sets.c.id)
        ).scalar_one()
    log.info("Created set %d of %s/%s at %s", set_id, owner, repository, commit_sha)
    return int(set_id)


def complete_set(
    bind: Bind,
    set_id: int,
    *,
    render_world: str | None = None,
    render_europe: str | None = None,
    render_usa: str | None = None,
    render_geojson: str | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Mark a set complete (§6 ``complete_set``): ``datetime_end`` now, and the coverage renders given.

    Idempotent: a set keeps its first end time; renders not given are left as they are.

    :raises LookupError: no set has this id
    """
    renders = {
        key: value
        for key, value in (
            ("render_world", render_world),
            ("render_europe", render_europe),
            ("render_usa", render_usa),
            ("render_geojson", render_geojson),
        )
        if value is not None
    }
    with transaction(bind) as connection:
        end = connection.execute(sa.select(sets.c.datetime_end).where(sets.c.id == set_id)).first()
        if end is None:
            raise LookupError(f"set {set_id} does not exist")
        values: dict[str, Any] = dict(renders)
        if end.datetime_end is None:
            values["datetime_end"] = now or utcnow()
        if values:
            connection.execute(sa.update(sets).where(sets.c.id == set_id).values(values))
    log.info("Completed set %d", set_id)


def get_set(bind: Bind, set_id: int) -> dict[str, Any] | None:
    """One set as a dict of its columns, or None."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(sets).where(sets.c.id == set_id)).first()
    return row_dict(row) if row is not None else None


def latest_completed_set(bind: Bind, owner: str, repository: str) -> dict[str, Any] | None:
    """The newest completed set of a repository (7.5.5 ``read_latest_set``), or None."""
    with transaction(bind) as connection:
        row = connection.execute(
            sa.select(sets)
            .where(sets.c.owner == owner, sets.c.repository == repository, sets.c.datetime_end.is_not(None))
            .order_by(sets.c.datetime_start.desc(), sets.c.id.desc())
            .limit(1)
        ).first()
    return row_dict(row) if row is not None else None
