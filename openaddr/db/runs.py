"""Runs: recording one layer entry's processing, reusing recent runs, messages (machine-ci.md §5, §6, §7).

The life of a run, as the ``process_source`` task drives it:

1. :func:`layer_digest` of the entry, then :func:`find_reusable_run` (unless the job is a re-run); when one is
   found, :func:`copy_run` records the copy and the entry is done (§5 step 1);
2. otherwise :func:`insert_run` reserves the run (status null, *pending*): its id names the storage folder
   ``runs/<id>/``;
3. after processing and uploading, :func:`finish_run` records the state with public URLs, the message and the
   status (§5 steps 4–5). A result is dropped when the run already has a status recorded after this attempt
   started, or a newer attempt has begun: the original's done/due race. A timeout is recorded the same way (state
   null, status false, "Timed out after H:MM:SS"), so a late success never turns a timed-out run green.

Every function takes an open :class:`~sqlalchemy.engine.Connection` (the caller owns the transaction) or an
:class:`~sqlalchemy.engine.Engine` (then the call is its own transaction). Times default to now in UTC; tests pass
explicit ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from openaddr.db.schema import jobs, row_dict, runs, sets

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

log = logging.getLogger(__name__)

#: The message of a successful run; status = (message == OK_MESSAGE) (7.5.5 ``MAGIC_OK_MESSAGE``).
OK_MESSAGE = "Everything is fine"
#: The message of a copy of a failed run.
REUSED_FAILURE_MESSAGE = "Re-using failed previous run"
#: The message when the processing subprocess crashed (7.5.5 named its command).
CRASH_MESSAGE = "Something went wrong in openaddr-process-one"
#: The message of a pending run whose try raised (:func:`mark_try_failed`); ``{}`` is the try number.
FAILED_TRY_PREFIX = "Try {} failed: "

#: Reuse windows of §5 step 1: CI reuses successes and failures of the last 10 days (7.5.5; 2.1.8 used 5 days).
CI_REUSE_WINDOW = dt.timedelta(days=10)
#: Batch reuses successes of the last 6 days only: every source is really processed at least weekly, and
#: transient failures are retried every night.
BATCH_REUSE_WINDOW = dt.timedelta(days=6)

#: State keys that name files and become public URLs when recorded (§7.2).
URL_KEYS = ("cache", "sample", "processed", "output", "preview")
#: State keys checked for the "Failed to produce <key> data" message, in 7.5.5's order (the last missing wins).
PRODUCED_KEYS = ("processed", "sample", "cache")

Bind = sa.Engine | sa.Connection
ReuseKind = Literal["ci", "batch"]

_DURATION = re.compile(
    r"^(?:(?P<days>-?\d+) days?, )?(?P<hours>\d+):(?P<minutes>\d\d):(?P<seconds>\d\d(?:\.\d+)?)$"
)


@dataclass(frozen=True)
class AirflowTask:
    """The Airflow task instance (and attempt) that makes a run; stored for log links and idempotency.

    :param dag_id: e.g. ``ci_job`` or ``batch_set``
    :param dag_run_id: e.g. ``ci__<job id>``
    :param task_id: e.g. ``process_source``
    :param map_index: index of the mapped task instance, -1 when not mapped (Airflow's convention)
    :param try_number: the attempt, from 1
    :param slot: the entry's position in the task instance (a batch task may process several small entries)
    """

    dag_id: str
    dag_run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    slot: int = 0

    @property
    def ti(self) -> str:
        """``<dag id>/<dag run id>/<task id>/<map index>`` (the ``airflow_ti`` column)."""
        return f"{self.dag_id}/{self.dag_run_id}/{self.task_id}/{self.map_index}"


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def transaction(bind: Bind) -> Iterator[sa.Connection]:
    """The caller's connection as it is, or a new connection in a transaction committed at the end."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as connection:
            yield connection


# --------------------------------------------------------------------------------------------------------------
# Digest, durations, messages
# --------------------------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 without escapes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def layer_digest(coverage: Any, entry: Mapping[str, Any]) -> str:
    """SHA-1 hex of the canonical JSON of ``[coverage, entry]``: what a run of the entry depends on (§5 step 1).

    7.5.5 compared the git blob sha of the whole file, so editing one layer re-ran all of them and reformatting the
    file re-ran everything; the digest ignores key order, whitespace and the other entries.

    :param coverage: the source's ``coverage`` object (or None)
    :param entry: the layer entry object
    """
    return hashlib.sha1(canonical_json([coverage, entry])).hexdigest()


def parse_duration(text: Any) -> float | None:
    """Seconds in a duration as Python prints a ``timedelta`` (``0:00:02.123456``, ``1 day, 2:03:04``), or None."""
    if not isinstance(text, str):
        return None
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    days = int(match["days"] or 0)
    return days * 86400 + int(match["hours"]) * 3600 + int(match["minutes"]) * 60 + float(match["seconds"])


def format_duration(duration: dt.timedelta) -> str:
    """A duration as in "Timed out after 3:00:00" (``str`` of a timedelta rounded to seconds)."""
    return str(dt.timedelta(seconds=round(duration.total_seconds())))


def run_message(
    state: Mapping[str, Any] | None, *, crashed: bool = False, timed_out: dt.timedelta | None = None
) -> str:
    """The result message of a run (§5 step 4); the run succeeded when it is :data:`OK_MESSAGE`.

    * a timeout: "Timed out after H:MM:SS";
    * a crash, or no state at all: "Something went wrong in openaddr-process-one";
    * a skipped entry: "Everything is fine";
    * else "Failed to produce <key> data" for a missing ``processed``, ``sample`` or ``cache``, checked in that
      order so that the last missing one wins (7.5.5's worker), or "Everything is fine".

    :param state: the state record (relative names or public URLs)
    :param crashed: the processing subprocess failed
    :param timed_out: the run's time limit, when it was reached
    """
    if timed_out is not None:
        return f"Timed out after {format_duration(timed_out)}"
    if crashed or state is None:
        return CRASH_MESSAGE
    message = OK_MESSAGE
    if not state.get("skipped"):
        for key in PRODUCED_KEYS:
            if not state.get(key):
                message = f"Failed to produce {key} data"
    return message


def public_state(
    state: Mapping[str, Any],
    *,
    run_id: int,
    urls: Mapping[str, str] | None = None,
    process_hash: str | None = None,
) -> dict[str, Any]:
    """The state as recorded (§7.2): file names replaced by their public URLs, plus ``run id`` and ``process hash``.

    Only keys that name a file in the state are replaced; a key left out of ``urls`` keeps its value (a legacy
    ``http`` cache URL, for instance).

    :param state: the state of processing.md §9.7
    :param run_id: the run's id
    :param urls: public URL per key of :data:`URL_KEYS`
    :param process_hash: MD5 of the published zip
    :raises ValueError: for a key of ``urls`` that is not one of :data:`URL_KEYS`
    """
    recorded = dict(state)
    for key, url in (urls or {}).items():
        if key not in URL_KEYS:
            raise ValueError(f"{key!r} is not a state key that names a file ({', '.join(URL_KEYS)})")
        if recorded.get(key):
            recorded[key] = url
    recorded["run id"] = run_id
    recorded["process hash"] = process_hash
    return recorded


# --------------------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------------------


def _result_values(
    run_id: int,
    state: Mapping[str, Any] | None,
    *,
    message: str,
    urls: Mapping[str, str] | None,
    process_hash: str | None,
    stats: Mapping[str, Any] | None,
    warning: str | None,
) -> dict[str, Any]:
    """Columns written when a result is recorded."""
    recorded = (
        public_state(state, run_id=run_id, urls=urls, process_hash=process_hash)
        if state is not None
        else None
    )
    count = recorded.get("address count") if recorded else None
    return {
        "state": recorded,
        "status": message == OK_MESSAGE,
        "message": message,
        "stats": dict(stats) if stats is not None else None,
        "warning": warning,
        "source_problem": recorded.get("source problem") if recorded else None,
        "address_count": count if isinstance(count, int) and not isinstance(count, bool) else None,
        "cache_seconds": parse_duration(recorded.get("cache time")) if recorded else None,
        "process_seconds": parse_duration(recorded.get("process time")) if recorded else None,
        "code_version": (recorded.get("code version") if recorded else None),
    }


def _task_values(task: AirflowTask | None) -> dict[str, Any]:
    if task is None:
        return {}
    return {
        "airflow_dag_id": task.dag_id,
        "airflow_dag_run_id": task.dag_run_id,
        "airflow_task_id": task.task_id,
        "airflow_map_index": task.map_index,
        "airflow_try_number": task.try_number,
        "airflow_slot": task.slot,
        "airflow_ti": task.ti,
    }


def _task_instance_filter(task: AirflowTask) -> list[Any]:
    return [
        runs.c.airflow_dag_id == task.dag_id,
        runs.c.airflow_dag_run_id == task.dag_run_id,
        runs.c.airflow_task_id == task.task_id,
        runs.c.airflow_map_index == task.map_index,
    ]


def _task_run_id(connection: sa.Connection, task: AirflowTask) -> int | None:
    return connection.execute(
        sa.select(runs.c.id).where(*_task_instance_filter(task), runs.c.airflow_slot == task.slot)
    ).scalar_one_or_none()


def task_run(bind: Bind, task: AirflowTask) -> dict[str, Any] | None:
    """The run of a task instance's entry (``task.slot``; any attempt), or None."""
    with transaction(bind) as connection:
        run_id = _task_run_id(connection, task)
        return get_run(connection, run_id) if run_id is not None else None


def task_runs(bind: Bind, task: AirflowTask) -> list[dict[str, Any]]:
    """Every run a task instance made (all its slots, any attempt), in slot order."""
    with transaction(bind) as connection:
        ids = connection.execute(
            sa.select(runs.c.id).where(*_task_instance_filter(task)).order_by(runs.c.airflow_slot)
        ).scalars()
        return [run for run_id in ids.all() if (run := get_run(connection, run_id)) is not None]


def insert_run(
    bind: Bind,
    *,
    source_path: str,
    source_layer: str | None,
    layer_name: str | None,
    layer_digest: str | None = None,
    source_id: str | None = None,
    source_data: bytes | None = None,
    job_id: str | None = None,
    set_id: int | None = None,
    commit_sha: str | None = None,
    task: AirflowTask | None = None,
    worker_id: str | None = None,
    code_version: str | None = None,
    is_merged: bool | None = None,
    state: Mapping[str, Any] | None = None,
    message: str | None = None,
    urls: Mapping[str, str] | None = None,
    process_hash: str | None = None,
    stats: Mapping[str, Any] | None = None,
    warning: str | None = None,
    started: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Reserve a run for an attempt, or record a run in one go; return its id.

    Without ``state`` and ``message`` the run is *pending* (status null) until :func:`finish_run`. With either, the
    result is recorded at once, exactly as :func:`finish_run` would (e.g. the failed runs of an invalid source file,
    which is never processed); ``message`` defaults to :func:`run_message` of the state.

    A task instance has one run: when ``task`` already made one (an earlier attempt), that run is reset to pending
    for this attempt and its id returned, so a retry overwrites its own ``runs/<id>/`` folder.

    :param source_path: ``sources/….json``
    :param source_layer: the layer type, or None when the file has no readable entries
    :param layer_name: the entry's name
    :param layer_digest: :func:`layer_digest` of the entry
    :param source_id: the git blob sha of the source file
    :param source_data: the source file's bytes
    :param job_id: the CI job, or None
    :param set_id: the batch set, or None (runs of sets count as merged)
    :param commit_sha: the commit the source file was read at
    :param task: the Airflow task instance and attempt
    :param worker_id: ``hostname/pid``
    :param code_version: version of the ``openaddr`` package (default: the state's ``code version``)
    :param is_merged: whether the commit is on the default branch (default: true for sets, unknown for jobs)
    :param state: the state record (processing.md §9.7), names relative to its folder
    :param message: the result message (default: from the state)
    :param urls: public URL per state key that names a file (:func:`public_state`)
    :param process_hash: MD5 of the published zip
    :param stats: ``stats.json``
    :param warning: the quality gate's warning (§10)
    :param started: when this attempt started (default: ``now``)
    :param now: the time of the call (default: now)
    """
    now = now or utcnow()
    started = started or now
    values: dict[str, Any] = {
        "source_path": source_path,
        "source_layer": source_layer,
        "layer_name": layer_name,
        "layer_digest": layer_digest,
        "source_id": source_id,
        "source_data": source_data,
        "job_id": job_id,
        "set_id": set_id,
        "commit_sha": commit_sha,
        "worker_id": worker_id,
        "code_version": code_version,
        "is_merged": True if is_merged is None and set_id is not None else is_merged,
        "datetime_start": started,
        "datetime_tz": started,
        # A new attempt starts pending, whatever an earlier attempt recorded.
        "state": None,
        "status": None,
        "message": None,
        "stats": None,
        "warning": None,
        "source_problem": None,
        "address_count": None,
        "cache_seconds": None,
        "process_seconds": None,
        "copy_of": None,
        **_task_values(task),
    }
    with transaction(bind) as connection:
        run_id = _task_run_id(connection, task) if task is not None else None
        if run_id is None:
            run_id = connection.execute(sa.insert(runs).values(values).returning(runs.c.id)).scalar_one()
            log.info("Reserved run %d for %s %s/%s", run_id, source_path, source_layer, layer_name)
        else:
            connection.execute(sa.update(runs).where(runs.c.id == run_id).values(values))
            log.info("Run %d: attempt %d of %s", run_id, task.try_number if task else 0, source_path)
        if state is not None or message is not None:
            finish_run(
                connection,
                run_id,
                state=state,
                message=message,
                urls=urls,
                process_hash=process_hash,
                stats=stats,
                warning=warning,
                attempt_started=started,
                try_number=task.try_number if task else None,
                code_version=code_version,
                now=now,
            )
    return int(run_id)


def finish_run(
    bind: Bind,
    run_id: int,
    *,
    state: Mapping[str, Any] | None,
    attempt_started: dt.datetime,
    try_number: int | None = None,
    message: str | None = None,
    crashed: bool = False,
    timed_out: dt.timedelta | None = None,
    urls: Mapping[str, str] | None = None,
    process_hash: str | None = None,
    stats: Mapping[str, Any] | None = None,
    warning: str | None = None,
    is_merged: bool | None = None,
    worker_id: str | None = None,
    code_version: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Record the result of one attempt of a run (§5 steps 4–5); idempotent.

    The result is **dropped** (and False returned) when the run already has a status recorded at or after
    ``attempt_started`` — a timeout, or this very result recorded before — or when a later attempt
    (``try_number``) has begun: 7.5.5 dropped a *done* message whose run was completed after the task was
    queued. A timeout (``timed_out``) is recorded like 7.5.5's due task: state null, status false, "Timed out
    after H:MM:SS"; so a success that arrives later is dropped and the run stays failed.

    :param run_id: the run from :func:`insert_run`
    :param state: the state record, names relative to its folder (None after a crash or timeout)
    :param attempt_started: when the attempt that produced this result started
    :param try_number: the attempt (Airflow's try number), when known
    :param message: the result message (default: :func:`run_message`)
    :param crashed: the processing subprocess failed
    :param timed_out: the time limit that was reached
    :param urls: public URL per state key that names a file
    :param process_hash: MD5 of the published zip
    :param stats: ``stats.json``
    :param warning: the quality gate's warning (§10)
    :param is_merged: whether the commit is on the default branch (None: leave as is)
    :param worker_id: ``hostname/pid`` (None: leave as is)
    :param code_version: version of the ``openaddr`` package (default: the state's)
    :param now: the time the status is recorded (default: now)
    :return: whether the result was recorded
    :raises LookupError: no run has this id
    """
    now = now or utcnow()
    if timed_out is not None:
        state = None
    if message is None:
        message = run_message(state, crashed=crashed, timed_out=timed_out)
    values = _result_values(
        run_id, state, message=message, urls=urls, process_hash=process_hash, stats=stats, warning=warning
    )
    values["code_version"] = code_version or values["code_version"]
    if values["code_version"] is None:
        del values["code_version"]
    values["datetime_tz"] = now
    if is_merged is not None:
        values["is_merged"] = is_merged
    if worker_id is not None:
        values["worker_id"] = worker_id
    # One conditional UPDATE: PostgreSQL re-checks the condition on the latest row version after waiting for a
    # concurrent writer, and SQLite serialises writers, so two attempts cannot both record.
    stale = sa.and_(runs.c.status.is_not(None), runs.c.datetime_tz >= attempt_started)
    condition = [runs.c.id == run_id, sa.not_(stale)]
    if try_number is not None:
        condition.append(sa.or_(runs.c.airflow_try_number.is_(None), runs.c.airflow_try_number <= try_number))
    with transaction(bind) as connection:
        recorded = connection.execute(sa.update(runs).where(*condition).values(values)).rowcount == 1
        if not recorded:
            exists = connection.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first()
            if exists is None:
                raise LookupError(f"run {run_id} does not exist")
            log.warning(
                "Run %d already has a result recorded since %s: dropped %r", run_id, attempt_started, message
            )
        else:
            log.info("Run %d: %s", run_id, message)
    return recorded


def mark_try_failed(bind: Bind, task: AirflowTask, error: str) -> int | None:
    """Say on a task instance's pending run that this try (``task.try_number``) ended with an error it raised:
    the run stays pending (status null, the next try resets it), its message reads ``Try N failed: <error>``.

    A try that leaves no such mark on its pending run never ended by itself: its process died (SIGKILL, a lost
    host, a worker killed with its tasks), which is how the next try tells a failed try from one lost with its
    worker (:func:`openaddr.machine.recording.previous_try`).

    :param error: what the try raised (cut to 500 characters)
    :return: the run's id, or None when the task instance has no pending run of this try
    """
    message = f"{FAILED_TRY_PREFIX.format(task.try_number)}{error}"[:500]
    with transaction(bind) as connection:
        return connection.execute(
            sa.update(runs)
            .where(
                *_task_instance_filter(task),
                runs.c.airflow_slot == task.slot,
                runs.c.airflow_try_number == task.try_number,
                runs.c.status.is_(None),
            )
            .values(message=message)
            .returning(runs.c.id)
        ).scalar_one_or_none()


# --------------------------------------------------------------------------------------------------------------
# Reuse
# --------------------------------------------------------------------------------------------------------------


def find_reusable_run(
    bind: Bind,
    *,
    source_path: str,
    source_layer: str | None,
    layer_name: str | None,
    layer_digest: str,
    kind: ReuseKind,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The newest run a new run of this entry may copy instead of processing (§5 step 1), or None.

    Same path, layer, name and digest; a recorded status; not itself a copy (``copy_of`` null); younger than the
    window. CI (``kind="ci"``): 10 days, successes and failures. Batch (``kind="batch"``): 6 days, successes only,
    and not rejected by a maintainer (a rejected run counts as failed, §10). A re-run request skips this call.

    :param kind: ``ci`` or ``batch``
    :param now: the reference time of the window (default: now)
    """
    now = now or utcnow()
    conditions: list[sa.ColumnElement[bool]]
    if kind == "ci":
        window, conditions = CI_REUSE_WINDOW, [runs.c.status.is_not(None)]
    elif kind == "batch":
        window = BATCH_REUSE_WINDOW
        conditions = [runs.c.status.is_(True), sa.or_(runs.c.accepted.is_(None), runs.c.accepted.is_(True))]
    else:
        raise ValueError(f"reuse kind must be 'ci' or 'batch', not {kind!r}")
    query = (
        sa.select(runs)
        .where(
            runs.c.source_path == source_path,
            _equal_or_null(runs.c.source_layer, source_layer),
            _equal_or_null(runs.c.layer_name, layer_name),
            runs.c.layer_digest == layer_digest,
            runs.c.copy_of.is_(None),
            runs.c.datetime_tz > now - window,
            *conditions,
        )
        .order_by(runs.c.datetime_tz.desc(), runs.c.id.desc())
        .limit(1)
    )
    with transaction(bind) as connection:
        row = connection.execute(query).first()
    if row is None:
        log.debug("No reusable %s run of %s %s/%s", kind, source_path, source_layer, layer_name)
        return None
    log.info(
        "Found reusable run %d (%s) of %s %s/%s", row.id, row.status, source_path, source_layer, layer_name
    )
    return row_dict(row)


def copy_run(
    bind: Bind,
    run_id: int,
    *,
    job_id: str | None = None,
    set_id: int | None = None,
    commit_sha: str | None = None,
    task: AirflowTask | None = None,
    is_merged: bool | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Record a copy of a previous run for a new job or set (§5 step 1); return the copy's id.

    The copy keeps the original's state, status, stats, warning and review, and points at it with ``copy_of``; its
    message is "Everything is fine" or "Re-using failed previous run". When ``task`` already made a run (a retried
    attempt), that run becomes the copy — unless it is the original itself, which is then returned unchanged.

    :param run_id: the run to copy (from :func:`find_reusable_run`)
    :param job_id: the new CI job, or None
    :param set_id: the new batch set, or None (runs of sets count as merged)
    :param commit_sha: the new commit
    :param task: the Airflow task instance making the copy
    :param is_merged: whether the commit is on the default branch (default: true for sets, unknown for jobs)
    :param now: the time of the copy (default: now)
    :raises LookupError: no run has this id
    """
    now = now or utcnow()
    with transaction(bind) as connection:
        original = connection.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if original is None:
            raise LookupError(f"run {run_id} does not exist")
        copied = {
            column: getattr(original, column)
            for column in (
                "source_path",
                "source_id",
                "source_data",
                "source_layer",
                "layer_name",
                "layer_digest",
                "state",
                "status",
                "stats",
                "warning",
                "accepted",
                "code_version",
                "worker_id",
                "source_problem",
                "address_count",
                "cache_seconds",
                "process_seconds",
            )
        }
        values = {
            **copied,
            "copy_of": run_id,
            "message": OK_MESSAGE if original.status else REUSED_FAILURE_MESSAGE,
            "job_id": job_id,
            "set_id": set_id,
            "commit_sha": commit_sha,
            "is_merged": True if is_merged is None and set_id is not None else is_merged,
            "datetime_tz": now,
            "datetime_start": now,
            **_task_values(task),
        }
        existing = _task_run_id(connection, task) if task is not None else None
        if existing == run_id:
            return run_id
        if existing is None:
            new_id = connection.execute(sa.insert(runs).values(values).returning(runs.c.id)).scalar_one()
        else:
            connection.execute(sa.update(runs).where(runs.c.id == existing).values(values))
            new_id = existing
    log.info("Run %d reuses run %d", new_id, run_id)
    return int(new_id)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def get_run(bind: Bind, run_id: int) -> dict[str, Any] | None:
    """One run as a dict of its columns, or None."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).first()
    return row_dict(row) if row is not None else None


def job_runs(bind: Bind, job_id: str) -> list[dict[str, Any]]:
    """The runs of a job, in id order."""
    with transaction(bind) as connection:
        rows = connection.execute(sa.select(runs).where(runs.c.job_id == job_id).order_by(runs.c.id)).all()
    return [row_dict(row) for row in rows]


def set_runs(bind: Bind, set_id: int) -> list[dict[str, Any]]:
    """The runs of a set, in id order."""
    with transaction(bind) as connection:
        rows = connection.execute(sa.select(runs).where(runs.c.set_id == set_id).order_by(runs.c.id)).all()
    return [row_dict(row) for row in rows]


def previous_run_times(bind: Bind, set_id: int) -> dict[str, float]:
    """Seconds each source path took in the set before ``set_id``, for slowest-first ordering (§6).

    The previous set is the newest *completed* set of the same owner and repository that started before this one.
    A path's time is ``cache time`` + ``process time`` summed over its entries' runs in that set (copies carry the
    times of the run they reuse); paths with an entry lacking either time are left out, and so are sorted first by
    :func:`slowest_first`, as 7.5.5 did.

    :param set_id: the new set
    :return: ``{source path: seconds}``; empty when there is no previous set
    """
    with transaction(bind) as connection:
        current = connection.execute(sa.select(sets).where(sets.c.id == set_id)).first()
        if current is None:
            raise LookupError(f"set {set_id} does not exist")
        previous_id = connection.execute(
            sa.select(sets.c.id)
            .where(
                _equal_or_null(sets.c.owner, current.owner),
                _equal_or_null(sets.c.repository, current.repository),
                sets.c.datetime_end.is_not(None),
                sets.c.id != set_id,
                sets.c.datetime_start <= current.datetime_start,
            )
            .order_by(sets.c.datetime_start.desc(), sets.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        if previous_id is None:
            return {}
        rows = connection.execute(
            sa.select(runs.c.source_path, runs.c.cache_seconds, runs.c.process_seconds).where(
                runs.c.set_id == previous_id, runs.c.status.is_not(None)
            )
        ).all()
    totals: dict[str, float] = {}
    incomplete: set[str] = set()
    for path, cache_seconds, process_seconds in rows:
        if cache_seconds is None or process_seconds is None:
            incomplete.add(path)
        else:
            totals[path] = totals.get(path, 0.0) + cache_seconds + process_seconds
    return {path: seconds for path, seconds in totals.items() if path not in incomplete}


def slowest_first(paths: list[str], run_times: Mapping[str, float]) -> list[str]:
    """Order source paths for a set (§6): paths without a previous time first, alphabetically, then by time
    descending (ties alphabetically), as 7.5.5's enqueuer did.

    :param paths: the set's source paths
    :param run_times: from :func:`previous_run_times`
    """
    unknown = sorted(path for path in paths if path not in run_times)
    known = sorted((path for path in paths if path in run_times), key=lambda path: (-run_times[path], path))
    return unknown + known


def _equal_or_null(column: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def owner_entries(
    bind: Bind, source_path: str, *, job_id: str | None = None, set_id: int | None = None
) -> set[tuple[str | None, str | None]]:
    """``(layer, name)`` of the runs a job (``job_id``) or else a set (``set_id``) already has for a source file;
    empty when neither is given."""
    if job_id is None and set_id is None:
        return set()
    owned = runs.c.job_id == job_id if job_id is not None else runs.c.set_id == set_id
    with transaction(bind) as connection:
        rows = connection.execute(
            sa.select(runs.c.source_layer, runs.c.layer_name).where(owned, runs.c.source_path == source_path)
        ).all()
    return {(row.source_layer, row.layer_name) for row in rows}


# --------------------------------------------------------------------------------------------------------------
# Merged work (machine-ci.md §2.4)
# --------------------------------------------------------------------------------------------------------------

#: How far back the daily recheck looks for runs whose merge is not known to have happened (§2.4).
MERGED_RECHECK_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class JobCommit:
    """A commit of a CI job's runs whose merge is to be checked: where it lives and what it is.

    :param owner: GitHub owner (``jobs.github_owner``)
    :param repository: GitHub repository (``jobs.github_repository``)
    :param commit_sha: the commit the runs read their source at
    """

    owner: str
    repository: str
    commit_sha: str


def unmerged_commits(
    bind: Bind,
    *,
    job_id: str | None = None,
    since: dt.datetime | None = None,
    only_unknown: bool = False,
) -> list[JobCommit]:
    """The distinct (owner, repository, commit) of job runs not known to be merged (``is_merged`` not true).

    Runs of sets, runs without a commit and jobs without a GitHub owner and repository (manual triggers) are left
    out: there is nothing to ask GitHub.

    :param job_id: only this job's runs
    :param since: only runs recorded at or after this time (the daily recheck's 30 days)
    :param only_unknown: only runs never checked (``is_merged`` null), as when a job's runs are recorded
    """
    merged = (
        runs.c.is_merged.is_(None)
        if only_unknown
        else sa.or_(runs.c.is_merged.is_(None), runs.c.is_merged.is_(False))
    )
    conditions: list[sa.ColumnElement[bool]] = [
        merged,
        runs.c.set_id.is_(None),
        runs.c.commit_sha.is_not(None),
        jobs.c.github_owner.is_not(None),
        jobs.c.github_repository.is_not(None),
    ]
    if job_id is not None:
        conditions.append(runs.c.job_id == job_id)
    if since is not None:
        conditions.append(runs.c.datetime_tz >= since)
    query = (
        sa.select(jobs.c.github_owner, jobs.c.github_repository, runs.c.commit_sha)
        .select_from(runs.join(jobs, jobs.c.id == runs.c.job_id))
        .where(*conditions)
        .distinct()
        .order_by(jobs.c.github_owner, jobs.c.github_repository, runs.c.commit_sha)
    )
    with transaction(bind) as connection:
        rows = connection.execute(query).all()
    return [JobCommit(str(owner), str(repository), str(sha)) for owner, repository, sha in rows]


def set_commit_merged(
    bind: Bind,
    commit: JobCommit,
    merged: bool,
    *,
    job_id: str | None = None,
    since: dt.datetime | None = None,
) -> int:
    """Record whether ``commit`` is on its repository's default branch on the job runs of that commit whose
    ``is_merged`` is not true (a merged run never goes back: a commit on the default branch stays there).

    :param merged: the answer of :func:`openaddr.machine.merged.commit_merged`
    :param job_id: only this job's runs
    :param since: only runs recorded at or after this time
    :return: how many runs were updated
    """
    owned = (
        sa.select(jobs.c.id)
        .where(jobs.c.github_owner == commit.owner, jobs.c.github_repository == commit.repository)
        .scalar_subquery()
    )
    conditions: list[sa.ColumnElement[bool]] = [
        runs.c.commit_sha == commit.commit_sha,
        runs.c.set_id.is_(None),
        runs.c.job_id.in_(owned),
        sa.or_(runs.c.is_merged.is_(None), runs.c.is_merged.is_(False)),
    ]
    if job_id is not None:
        conditions.append(runs.c.job_id == job_id)
    if since is not None:
        conditions.append(runs.c.datetime_tz >= since)
    if not merged:
        # Already false stays false: only unknown runs learn that they are not merged.
        conditions.append(runs.c.is_merged.is_(None))
    with transaction(bind) as connection:
        count = connection.execute(sa.update(runs).where(*conditions).values(is_merged=merged)).rowcount
    log.info(
        "%s/%s@%s: %s on the default branch (%d runs)",
        commit.owner,
        commit.repository,
        commit.commit_sha,
        "merged" if merged else "not",
        count,
    )
    return int(count)
