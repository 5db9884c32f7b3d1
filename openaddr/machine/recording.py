"""Running and recording one entry: reuse or process it, publish its outputs, record its run; and what a failed
task leaves behind (machine-ci.md §3, §5).

:func:`process_source` is the body of ``process_source`` (one entry), :func:`process_entries` of a batch group;
:func:`record_task_failure` is what the run listener records for a failed or timed-out attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, TypedDict

import openaddr
from openaddr.db import jobs as db_jobs, retry as db_retry, runs as db_runs
from openaddr.errors import SourceProblem
from openaddr.machine.child import format_bytes, memory_limit, run_process_one, tail
from openaddr.machine.entries import LARGE, STANDARD, TIERS, PlannedEntry, RunOwner, worker_id
from openaddr.machine.scratch import WORK_PREFIX, work_folder
from openaddr.quality import gate_warning
from openaddr.settings import Settings
from openaddr.skeleton import FILE_NAME as SKELETON_FILE, STATE_KEY as SKELETON_KEY, read_skeleton
from openaddr.storage import public_state, read_state
from openaddr.zygote import Zygote

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import sqlalchemy as sa

    from openaddr.storage import Storage

log = logging.getLogger(__name__)

#: The scratch folder's variable (``Settings.scratch``), passed on to the processing child.
SCRATCH_VARIABLE = Settings.variable("scratch")


class _LayerKey(TypedDict):
    """The columns that name a source layer entry in the ``runs`` table."""

    source_path: str
    source_layer: str | None
    layer_name: str | None


def process_source(
    engine: sa.Engine,
    storage: Storage,
    entry: PlannedEntry | Mapping[str, Any],
    owner: RunOwner,
    *,
    scratch: Path,
    task: db_runs.AirflowTask | None = None,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
    started: dt.datetime | None = None,
    zygote: Zygote | None = None,
) -> dict[str, Any]:
    """``process_source``: reuse or process one layer entry, publish its outputs, record its run (§5).

    Source failures are recorded, not raised: the return value says what happened. Infrastructure errors (storage,
    database) propagate, so Airflow retries the task; a retry overwrites the same run (one run per task instance).
    Each Machine-database step is first retried in-process while its connection is lost or refused
    (:mod:`openaddr.db.retry`, ``OPENADDR_DATABASE_RETRY_SECONDS``): a short outage costs a wait, not the
    processing; a longer one raises :class:`~openaddr.db.retry.DatabaseUnavailable`.

    :param entry: the planned entry
    :param owner: the job or set
    :param scratch: the scratch folder: this attempt works in ``<scratch>/run-<run id>/``, removed on exit; folders
        that killed attempts left there are swept first (:func:`openaddr.machine.scratch.work_folder`)
    :param task: the Airflow task instance and attempt
    :param limit: memory limit of the subprocess (default: :func:`memory_limit` of the entry's tier; the standard
        tier's for a pull request's job, whatever size the source claims)
    :param env: environment of the subprocess
    :param started: when the attempt started (default: now)
    :param zygote: the zygote to fork the processing child from (default: one for this entry alone)
    :return: ``{run_id, status, message, skipped, copy_of, source_problem, address_count, seconds, label}``
    """
    entry = entry if isinstance(entry, PlannedEntry) else PlannedEntry.from_dict(entry)
    started = started or db_runs.utcnow()
    db = db_retry.Retry(db_retry.budget_seconds())
    common = _LayerKey(source_path=entry.path, source_layer=entry.layer, layer_name=entry.name)

    if not owner.rerun:
        reusable = db(db_runs.find_reusable_run, engine, **common, layer_digest=entry.digest, kind=owner.kind)
        if reusable is not None:
            run_id = db(
                db_runs.copy_run,
                engine,
                reusable["id"],
                job_id=owner.job_id,
                set_id=owner.set_id,
                commit_sha=owner.commit_sha,
                task=task,
            )
            return db(_finish, engine, owner, entry, run_id, seconds=0.0)

    content = storage.get_bytes(entry.source_key)
    run_id = db(
        db_runs.insert_run,
        engine,
        **common,
        layer_digest=entry.digest,
        source_id=entry.blob_sha,
        source_data=content,
        job_id=owner.job_id,
        set_id=owner.set_id,
        commit_sha=owner.commit_sha,
        task=task,
        worker_id=worker_id(),
        code_version=openaddr.__version__,
        started=started,
    )
    with work_folder(scratch, f"{WORK_PREFIX}{run_id}") as work:
        source_file = work / entry.path
        source_file.parent.mkdir(parents=True)
        source_file.write_bytes(content)
        out, log_path = work / "out", work / "process-one.log"
        # A pull request's source is untrusted: its conform.size cannot buy it the large tier's limit.
        size = STANDARD if owner.pull_request else entry.size
        limit = memory_limit(size=size) if limit is None else limit
        # The child's TMPDIR is its work folder: it finds the machine-wide ArcGIS host limiter
        # (openaddr.download.hostlimit) in the scratch folder only when told where that is.
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault(SCRATCH_VARIABLE, str(scratch))
        child = run_process_one(
            source_file,
            out,
            layer=entry.layer,
            name=entry.name,
            timeout=entry.timeout,
            log_path=log_path,
            limit=limit,
            env=child_env,
            zygote=zygote,
        )
        state_dir = out / entry.layer / entry.name
        has_state = (state_dir / "index.json").is_file()
        crashed = child.returncode not in (0, 1) or not has_state
        log.info(
            "%s: process-one exited %s after %.1f s%s",
            entry.label,
            child.returncode,
            child.seconds,
            " (timed out)" if child.timed_out else "",
        )
        state_dir.mkdir(parents=True, exist_ok=True)
        urls = storage.publish_run(run_id, state_dir, output=log_path if crashed else None)
        state = (
            public_state(dict(zip(*read_state(state_dir / "index.json"), strict=True)), urls)
            if has_state
            else None
        )
        message = None
        # The child stops itself at the entry's deadline and records a failure whose log says so; machine-ci.md
        # §5 names that run "Timed out after …" like one the parent killed.
        timed_out = child.timed_out or (
            state is not None
            and bool(state.get("source problem"))
            and b"Timed out after" in tail(state_dir / "output.txt")
        )
        if state is not None and state.get("source problem") == SourceProblem.missing_conform.value:
            # The conform the child suggested from the data (machine-ci.md §9.1), for the run page and comment.
            record = read_skeleton(state_dir / SKELETON_FILE)
            if record is not None:
                state[SKELETON_KEY] = record
        if timed_out:
            state = None
        elif child.out_of_memory and (crashed or (state or {}).get("source problem")):
            message = f"Ran out of memory (limit {format_bytes(limit)})" if limit else "Ran out of memory"
        stats = _read_json(state_dir / "stats.json")
        warning = None
        if (
            not crashed
            and not timed_out
            and message is None
            and state is not None
            and not state.get("skipped")
            and db_runs.run_message(state) == db_runs.OK_MESSAGE
        ):
            # The quality gate (§10): a success that breaks a rule is recorded held, with its warning.
            warning = db(gate_warning, engine, run_id, stats, **common)
        db(
            db_runs.finish_run,
            engine,
            run_id,
            state=None if crashed else state,
            attempt_started=started,
            try_number=task.try_number if task else None,
            message=message,
            crashed=crashed,
            timed_out=dt.timedelta(seconds=entry.timeout) if timed_out else None,
            process_hash=_package_md5(state_dir) if not crashed else None,
            stats=stats,
            warning=warning,
            worker_id=worker_id(),
        )
        return db(_finish, engine, owner, entry, run_id, seconds=child.seconds)


def process_entries(
    engine: sa.Engine,
    storage: Storage,
    entries: Sequence[PlannedEntry | Mapping[str, Any]],
    owner: RunOwner,
    *,
    scratch: Path,
    task: db_runs.AirflowTask | None = None,
    group_deadline: float | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """A batch task's group: :func:`process_source` for each entry in turn, entry *i* in slot *i* of the task.

    A retried attempt keeps what an earlier attempt finished (its runs are not processed again) and goes on from
    the first entry without a result; an infrastructure error stops the group and propagates, as for one entry.
    The group's processing children are forked from one zygote, started when the first entry needs it and
    stopped when the group ends (:class:`~openaddr.zygote.Zygote`).

    The group deadline: once the group has run ``group_deadline`` seconds, the entries it has not started are
    *released*, not processed here (no run is made for them): their summaries say ``released`` and carry the
    entry, for a task of their own (``process_released_source`` in the batch DAG). The entry that ran late
    finishes here, under its own deadline.

    :param group_deadline: seconds (None: none)
    :return: one summary per entry (:func:`process_source`), or ``{"label", "released": True, "entry"}``
    """
    if "limit" not in kwargs:  # read once for the group, not once an entry (a settings parse: ~10 ms)
        kwargs["limits"] = {tier: memory_limit(size=tier) for tier in TIERS}
    with Zygote(kwargs.get("env")) as zygote:
        return _process_group(
            engine,
            storage,
            entries,
            owner,
            scratch=scratch,
            task=task,
            group_deadline=group_deadline,
            zygote=zygote,
            **kwargs,
        )


def _process_group(
    engine: sa.Engine,
    storage: Storage,
    entries: Sequence[PlannedEntry | Mapping[str, Any]],
    owner: RunOwner,
    *,
    scratch: Path,
    task: db_runs.AirflowTask | None,
    group_deadline: float | None,
    limits: Mapping[str, int | None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    db = db_retry.Retry(db_retry.budget_seconds())
    for slot, entry in enumerate(entries):
        planned = entry if isinstance(entry, PlannedEntry) else PlannedEntry.from_dict(entry)
        if group_deadline is not None and slot > 0 and time.monotonic() - began > group_deadline:
            rest = [e if isinstance(e, PlannedEntry) else PlannedEntry.from_dict(e) for e in entries[slot:]]
            log.warning(
                "Group deadline of %.0f s passed after %d of %d entries: %d released to tasks of their own",
                group_deadline,
                slot,
                len(entries),
                len(rest),
            )
            results += [{"label": e.label, "released": True, "entry": e.to_dict()} for e in rest]
            break
        slot_task = dataclasses.replace(task, slot=slot) if task is not None else None
        if slot_task is not None and slot_task.try_number > 1:
            earlier = db(db_runs.task_run, engine, slot_task)
            if earlier is not None and earlier["status"] is not None:
                results.append(db(_finish, engine, owner, planned, earlier["id"], seconds=0.0))
                continue
            if earlier is not None:
                log.warning("%s: %s", planned.label, previous_try(earlier))
        if limits is not None:
            # As process_source chooses: a pull request's source gets the standard tier's limit.
            kwargs["limit"] = limits[LARGE if planned.size == LARGE and not owner.pull_request else STANDARD]
        try:
            results.append(
                process_source(engine, storage, planned, owner, scratch=scratch, task=slot_task, **kwargs)
            )
        except Exception as error:
            if slot_task is not None:
                _mark_try_failed(engine, slot_task, error)
            raise
    return results


def previous_try(run: Mapping[str, Any]) -> str:
    """What became of the latest try that reached a pending run (its ``airflow_try_number``), as the next try
    logs it: failed with the error it marked (:func:`openaddr.db.runs.mark_try_failed`), or, without a mark,
    lost with its worker: that try's process died before it could record a result or an error. (One exception:
    a try whose error could not be marked because the Machine database itself was unreachable; that try's own
    log says so.)

    :param run: the pending run (:func:`openaddr.db.runs.task_run`)
    """
    number = run["airflow_try_number"]
    host, _, pid = str(run["worker_id"] or "?/?").rpartition("/")
    started = run["datetime_start"]
    when = f", started {started:%Y-%m-%d %H:%M:%S} UTC" if started is not None else ""
    message = run["message"] or ""
    if message.startswith(db_runs.FAILED_TRY_PREFIX.format(number)):
        return f"previous try {number} of run {run['id']} failed on {host}: {message.split(': ', 1)[1]}"
    return (
        f"previous try {number} was lost with its worker {host} (run {run['id']}, task process {pid}{when}): "
        f"it ended without recording a result or an error"
    )


def _mark_try_failed(engine: sa.Engine, task: db_runs.AirflowTask, error: BaseException) -> None:
    """Mark the try's pending run as failed by ``error`` (:func:`openaddr.db.runs.mark_try_failed`); never
    raises: the database may be what failed, and the error itself propagates."""
    try:
        db_runs.mark_try_failed(engine, task, f"{type(error).__name__}: {error}")
    except Exception:
        log.warning("Could not mark try %d of %s as failed", task.try_number, task.ti, exc_info=True)


def _finish(
    engine: sa.Engine, owner: RunOwner, entry: PlannedEntry, run_id: int, *, seconds: float
) -> dict[str, Any]:
    run = db_runs.get_run(engine, run_id)
    assert run is not None
    if owner.job_id is not None:
        db_jobs.update_job(engine, owner.job_id)
    state = run["state"] or {}
    return {
        "run_id": run_id,
        "label": entry.label,
        "status": run["status"],
        "message": run["message"],
        "skipped": bool(state.get("skipped")),
        "copy_of": run["copy_of"],
        "source_problem": run["source_problem"],
        "address_count": run["address_count"],
        "seconds": round(seconds, 3),
    }


def _package_md5(state_dir: Path) -> str | None:
    packages = sorted(p for p in state_dir.glob("*.zip") if not p.name.startswith("cache."))
    if len(packages) != 1:
        return None
    digest = hashlib.md5()
    with packages[0].open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def record_task_failure(
    engine: sa.Engine,
    task: db_runs.AirflowTask,
    *,
    timeout: dt.timedelta | None = None,
    final: bool = True,
    now: dt.datetime | None = None,
    entries: Sequence[PlannedEntry | Mapping[str, Any]] = (),
    owner: RunOwner | None = None,
) -> list[dict[str, Any]]:
    """Record what a failed ``process_source`` attempt leaves behind; return the task instance's runs.

    * a timeout (``timeout`` given): each unfinished run fails with "Timed out after H:MM:SS" and state null,
      whatever comes later (§3.2: like the original's due task);
    * a final failure: "Something went wrong in openaddr-process-one";
    * an attempt that will be retried: the runs stay pending; the next attempt resets them.

    A run that already has a result is left alone. For a group (``entries``, ``owner``), a final
    failure or a timeout also records the entries the task never reached, so the set accounts for every entry. The
    runs' job is recomputed.

    :param entries: the task's entries, in slot order (a group of the batch); empty: only the runs made
    :param owner: their job or set (with ``entries``)
    """
    if (timeout is not None or final) and entries and owner is not None:
        for slot, entry in enumerate(entries):
            slot_task = dataclasses.replace(task, slot=slot)
            if db_runs.task_run(engine, slot_task) is None:
                planned = entry if isinstance(entry, PlannedEntry) else PlannedEntry.from_dict(entry)
                db_runs.insert_run(
                    engine,
                    source_path=planned.path,
                    source_layer=planned.layer,
                    layer_name=planned.name,
                    layer_digest=planned.digest,
                    source_id=planned.blob_sha,
                    job_id=owner.job_id,
                    set_id=owner.set_id,
                    commit_sha=owner.commit_sha,
                    task=slot_task,
                    worker_id=worker_id(),
                    code_version=openaddr.__version__,
                    started=now,
                )
    recorded = []
    jobs = set()
    for run in db_runs.task_runs(engine, task):
        # A run with a result (this attempt's, a copy, or a group entry an earlier attempt finished) stands.
        if (timeout is not None or final) and run["status"] is None:
            db_runs.finish_run(
                engine,
                run["id"],
                state=None,
                attempt_started=run["datetime_start"],
                try_number=task.try_number,
                crashed=timeout is None,
                timed_out=timeout,
                now=now,
            )
        if run["job_id"] is not None:
            jobs.add(run["job_id"])
        recorded.append(run["id"])
    for job_id in sorted(jobs):
        db_jobs.update_job(engine, job_id)
    return [found for run_id in recorded if (found := db_runs.get_run(engine, run_id)) is not None]
