"""Planning: expand source files into layer entries, for a CI job and for a batch set (machine-ci.md §4, §6).

:func:`plan_ci_job` is the CI DAG's ``plan_job`` and :func:`finish_ci_job` its ``finish_job``; :func:`plan_sources`
stores the snapshot of each source file and records a failed run (*invalid_source*) for every file that cannot be
read or fails strict validation; :func:`group_entries` and :func:`by_tier` shape the mapped tasks' arguments.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import openaddr
from openaddr.db import jobs as db_jobs, runs as db_runs
from openaddr.errors import SourceFileError, SourceProblem
from openaddr.machine.entries import (
    LARGE,
    STANDARD,
    TIERS,
    PlannedEntry,
    RunOwner,
    SourceSnapshot,
    TriggerError,
    check_source_path,
    entry_size,
    worker_id,
)
from openaddr.outputs import STATE_KEYS
from openaddr.process_one import entry_timeout_hours

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    import sqlalchemy as sa

    from openaddr.machine.estimate import Estimate
    from openaddr.storage import Storage

log = logging.getLogger(__name__)


#: Grouping of the nightly batch: a task instance costs Airflow about 3 s of worker time on the 2-core development
#: machine (DAG parse, listener, Execution API calls, the zygote's start; benchmarks/README.md), far more than a
#: small source takes to process. So entries whose previous run took less than :data:`SMALL_ENTRY_SECONDS` share
#: tasks, up to :data:`GROUP_SIZE` to a task and a budget of *cost* per task: each entry's previous run time plus
#: :data:`ENTRY_OVERHEAD_SECONDS`, what the task spends on it besides (forking its child, publishing, recording).
#: The budget is :data:`GROUP_BUDGET_SECONDS`, or less when the set's small entries would then make fewer than
#: :data:`TASKS_PER_SLOT` tasks per worker slot (so that the last tasks do not leave slots idle; never below
#: :data:`MIN_GROUP_SECONDS`). An entry without a previous time (the first night) is grouped the same way by its
#: estimate (:mod:`openaddr.machine.estimate`: ArcGIS count, ``Content-Length``, the source's hints); unknown,
#: slower and large ones keep a task each; CI never groups (one task, one status line, per entry).
SMALL_ENTRY_SECONDS = 60.0
GROUP_SIZE = 100
GROUP_BUDGET_SECONDS = 300.0
ENTRY_OVERHEAD_SECONDS = 0.4
TASKS_PER_SLOT = 4
MIN_GROUP_SECONDS = 30.0
#: A group's deadline: once it has run this long (twice its budget: an entry turned out far slower than its
#: previous time or estimate), it releases the entries it has not started to tasks of their own
#: (:func:`openaddr.machine.process_entries`).
GROUP_DEADLINE_SECONDS = 2 * GROUP_BUDGET_SECONDS
#: GitHub events whose CI job checks a pull request's files (machine-ci.md §2.1 steps 6–7).
PULL_REQUEST_EVENTS = frozenset({"pull_request", "issue_comment"})
#: Largest CI trigger accepted, as the webhook caps it (§2.1 step 10).
MAX_CI_FILES = 200


def _invalid_state(path: str) -> dict[str, Any]:
    state: dict[str, Any] = dict.fromkeys(STATE_KEYS)
    state.update(
        {
            "source": PurePosixPath(path).name,
            "skipped": False,
            "source problem": SourceProblem.invalid_source.value,
            "code version": openaddr.__version__,
        }
    )
    return state


def plan_sources(
    engine: sa.Engine,
    storage: Storage,
    files: Iterable[SourceSnapshot],
    *,
    prefix: str,
    owner: RunOwner,
) -> list[PlannedEntry]:
    """Store a snapshot of each source file under ``<prefix>/<path>`` and expand it into layer entries.

    A file that is not JSON, or fails strict validation, is not planned: a failed run with problem
    *invalid_source* is recorded for each of its entries (one run without layer when none can be read), with the
    first error as its message (machine-ci.md §6).

    :param files: the source files
    :param prefix: storage folder of the snapshot, ``jobs/<id>/sources`` or ``sets/<id>/sources``
    :param owner: the job or set
    :return: the entries to process, in file order
    """
    planned: list[PlannedEntry] = []
    for snapshot in files:
        planned += _plan_file(engine, storage, snapshot, prefix=prefix, owner=owner)
    return planned


def _plan_file(
    engine: sa.Engine,
    storage: Storage,
    snapshot: SourceSnapshot,
    *,
    prefix: str,
    owner: RunOwner,
) -> list[PlannedEntry]:
    from openaddr.sources import parse_source
    from openaddr.validation import describe_issue, fatal_issues

    path = check_source_path(snapshot.path)
    key = f"{prefix}/{path[len('sources/') :]}"
    storage.put_bytes(snapshot.content, key, content_type="application/json")
    # Parsed from memory (no temporary file a killed task could leave behind), named by its repository path.
    try:
        source = parse_source(snapshot.content, path)
        # Strict (schema 2) files are invalid on any problem; the others only on an unsafe one (processing.md §2.5,
        # issue 10); their other problems are warnings in the run's log.
        errors = [describe_issue(source, issue) for issue in fatal_issues(source)]
        entries = source.entries()
    except SourceFileError as exc:
        errors, entries, source = [str(exc)], [], None
    except Exception as exc:  # a document too malformed to expand must fail alone, not stop the whole job
        log.warning("%s: cannot read its layers", path, exc_info=True)
        errors, entries, source = [f"{path}: cannot read its layers: {exc!r}"], [], None
    if errors:
        first = errors[0]
        log.warning("%s is invalid (%d errors): %s", path, len(errors), first)
        targets: list[tuple[str | None, str | None, Mapping[str, Any]]] = [
            (entry.layer, entry.name, entry.data) for entry in entries
        ] or [(None, None, {})]
        recorded = db_runs.owner_entries(engine, path, job_id=owner.job_id, set_id=owner.set_id)
        for layer, name, _data in targets:
            if (layer, name) in recorded:  # a retried planning task: recorded already
                continue
            db_runs.insert_run(
                engine,
                source_path=path,
                source_layer=layer,
                layer_name=name,
                # No digest: a run of an invalid file must never be reused once the file is fixed.
                layer_digest=None,
                source_id=snapshot.blob_sha,
                source_data=snapshot.content,
                job_id=owner.job_id,
                set_id=owner.set_id,
                commit_sha=owner.commit_sha,
                worker_id=worker_id(),
                code_version=openaddr.__version__,
                state=_invalid_state(path),
                message=f"Invalid source: {first}"[:1000],
            )
        return []
    assert source is not None
    coverage = source.document.get("coverage")
    planned = []
    for entry in entries:
        planned.append(
            PlannedEntry(
                path=path,
                layer=entry.layer,
                name=entry.name,
                source_key=key,
                blob_sha=snapshot.blob_sha,
                digest=db_runs.layer_digest(coverage, entry.data),
                timeout=entry_timeout_hours(entry.data) * 3600.0,
                # A pull request's claim of conform.size is not trusted: standard tier, standard limits.
                size=STANDARD if owner.pull_request else entry_size(entry.data),
            )
        )
    return planned


def _planned_by_path(
    files: Iterable[SourceSnapshot], entries: Sequence[PlannedEntry]
) -> dict[str, list[Any]]:
    planned: dict[str, list[Any]] = {snapshot.path: [] for snapshot in files}
    for entry in entries:
        planned.setdefault(entry.path, []).append((entry.layer, entry.name))
    return planned


def ci_sources(conf: Mapping[str, Any]) -> list[SourceSnapshot]:
    """The source files of a CI trigger: ``conf["sources"]``, each ``{path, blob_sha, content}`` (text) or
    ``{path, blob_sha, content_b64}`` (the webhook's form).

    :raises TriggerError: a malformed trigger (no files list, a path outside ``sources/``, bad base64, too many
        files), with the reason
    """
    items = conf.get("sources")
    if not isinstance(items, list) or not items:
        raise TriggerError("the trigger's conf has no 'sources' list of files")
    if len(items) > MAX_CI_FILES:
        raise TriggerError(f"{len(items)} source files in one job; at most {MAX_CI_FILES}")
    files = []
    for item in items:
        if not isinstance(item, dict) or "path" not in item:
            raise TriggerError(f"each source needs a path: {item!r:.200}")
        path = check_source_path(str(item["path"]))
        if item.get("content_b64") is not None:
            try:
                # GitHub's contents API wraps base64 at 60 characters.
                content = base64.b64decode("".join(str(item["content_b64"]).split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise TriggerError(f"{path}: content_b64 is not base64: {exc}") from exc
        elif isinstance(item.get("content"), str):
            content = item["content"].encode("utf-8")
        else:
            raise TriggerError(f"{path}: neither content nor content_b64 given")
        files.append(SourceSnapshot(path, item.get("blob_sha"), content))
    return files


def ci_owner(conf: Mapping[str, Any], dag_run_id: str) -> RunOwner:
    """The job of a CI trigger: ``conf["job_id"]``, else one derived from the DAG run id (a manual trigger); a job
    of a pull request when ``conf["event"]`` is ``pull_request`` or ``issue_comment`` (a re-run request)."""
    job_id = str(conf.get("job_id") or dag_run_id.removeprefix("ci__"))[:40]
    return RunOwner(
        "ci",
        job_id=job_id,
        commit_sha=conf.get("commit_sha"),
        rerun=bool(conf.get("rerun") or conf.get("is_rerun")),
        pull_request=conf.get("event") in PULL_REQUEST_EVENTS,
    )


def plan_ci_job(
    engine: sa.Engine, storage: Storage, conf: Mapping[str, Any], *, dag_run_id: str
) -> list[dict[str, Any]]:
    """``plan_job``: record the job unless the webhook did, plan its entries; return the ``process_source``
    arguments (:func:`task_arguments`).

    :param conf: the DAG run's conf (see :func:`ci_sources`; ``job_id``, ``commit_sha``, ``rerun``, ``github``:
        ``{status_url, comments_url, owner, repository}`` or the webhook's flat ``status_url``/``owner``/… keys)
    :param dag_run_id: the DAG run (``ci__<job id>`` when the webhook triggered it)
    :raises TriggerError: a malformed trigger
    """
    files = ci_sources(conf)
    owner = ci_owner(conf, dag_run_id)
    nested = conf.get("github")
    github: Mapping[str, Any] = nested if isinstance(nested, dict) else conf
    assert owner.job_id is not None
    if db_jobs.get_job(engine, owner.job_id) is None:
        db_jobs.create_job(
            engine,
            job_id=owner.job_id,
            task_files={f.blob_sha or f"unknown:{f.path}": f.path for f in files},
            github_owner=github.get("owner"),
            github_repository=github.get("repository"),
            github_status_url=github.get("status_url"),
            github_comments_url=github.get("comments_url"),
            github_delivery_id=conf.get("delivery_id"),
            github_event=conf.get("event"),
            is_rerun=owner.rerun,
            airflow_dag_run_id=dag_run_id,
        )
    entries = plan_sources(engine, storage, files, prefix=f"jobs/{owner.job_id}/sources", owner=owner)
    db_jobs.update_job(engine, owner.job_id, planned=_planned_by_path(files, entries))
    log.info("Job %s: %d files, %d entries to process", owner.job_id, len(files), len(entries))
    return task_arguments(entries, owner)


def task_arguments(entries: Iterable[PlannedEntry], owner: RunOwner) -> list[dict[str, Any]]:
    """The keyword arguments of the mapped ``process_source`` tasks: ``{"entry": …, "run_owner": …}`` each."""
    run_owner = dataclasses.asdict(owner)
    return [{"entry": entry.to_dict(), "run_owner": run_owner} for entry in entries]


def group_entries(
    arguments: Iterable[Mapping[str, Any]],
    times: Mapping[str, float],
    *,
    size: int = GROUP_SIZE,
    budget: float = GROUP_BUDGET_SECONDS,
    small: float = SMALL_ENTRY_SECONDS,
    deadline: float = GROUP_DEADLINE_SECONDS,
    slots: int | None = None,
) -> list[dict[str, Any]]:
    """Batch task arguments ``{"entries": [entry, …], "run_owner": …}``, in the order given; a group of more
    than one entry also ``"group_deadline": deadline``.

    Consecutive entries whose path took less than ``small`` seconds in the previous set (``times``, as
    :func:`openaddr.db.runs.previous_run_times`) share a task: up to ``size`` of them and ``budget`` seconds of
    cost (previous time plus :data:`ENTRY_OVERHEAD_SECONDS` each). Any other entry (no previous time, slower, or
    large) has a task of its own.

    :param arguments: :func:`task_arguments` of one owner, slowest first
    :param slots: the worker slots the tasks share: the budget shrinks so that the small entries make at least
        :data:`TASKS_PER_SLOT` tasks per slot (down to :data:`MIN_GROUP_SECONDS`); None: ``budget`` as given
    """
    arguments = list(arguments)

    def groupable(argument: Mapping[str, Any]) -> float | None:
        seconds = times.get(argument["entry"]["path"])
        if seconds is None or seconds >= small or argument["entry"].get("size") == LARGE:
            return None
        return seconds + ENTRY_OVERHEAD_SECONDS

    costs = [groupable(argument) for argument in arguments]
    if slots is not None and slots > 0:
        total = sum(cost for cost in costs if cost is not None)
        budget = min(budget, max(MIN_GROUP_SECONDS, total / (slots * TASKS_PER_SLOT)))
    groups: list[dict[str, Any]] = []
    current: list[Mapping[str, Any]] = []
    spent = 0.0

    def close() -> None:
        nonlocal current, spent
        if current:
            groups.append({"entries": [a["entry"] for a in current], "run_owner": current[0]["run_owner"]})
        current, spent = [], 0.0

    for argument, cost in zip(arguments, costs, strict=True):
        if cost is None:
            close()
            current = [argument]
            close()
            continue
        if current and (len(current) >= size or spent + cost > budget):
            close()
        current.append(argument)
        spent += cost
    close()
    for group in groups:
        if len(group["entries"]) > 1:
            group["group_deadline"] = deadline
    return groups


def batch_task_groups(
    engine: sa.Engine,
    set_id: int,
    arguments: Iterable[Mapping[str, Any]],
    *,
    storage: Storage | None = None,
    estimate: Callable[[list[dict[str, Any]]], Mapping[str, Estimate]] | None = None,
    slots: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``list_sources``'s result: the planned entries by tier (:func:`by_tier`), the standard ones grouped by the
    previous set's times, else by their estimate (:func:`group_entries`), the large ones a task each.

    :param storage: where the set's source files are (to read the entries to estimate); None: no estimates, the
        entries without a previous time keep a task each
    :param estimate: how to estimate (default :func:`openaddr.machine.estimate.estimate_entries`)
    :param slots: the worker slots the set's standard tasks share (:func:`group_entries`)
    """
    from openaddr.machine.estimate import estimate_entries

    tiers = by_tier(arguments)
    times = dict(db_runs.previous_run_times(engine, set_id))
    unknown = [a["entry"] for a in tiers[STANDARD] if a["entry"]["path"] not in times]
    if unknown and storage is not None:
        estimates = (estimate or estimate_entries)(_with_data(storage, unknown))
        by_path: dict[str, list[float | None]] = {}
        for entry in unknown:
            found = estimates.get(entry["label"])
            by_path.setdefault(entry["path"], []).append(found.seconds if found else None)
        for path, seconds in by_path.items():
            if all(value is not None for value in seconds):
                times[path] = max(value for value in seconds if value is not None)
    # Slowest first as plan_batch_set ordered them, now that estimates are known too: unknown entries first, then
    # by (previous or estimated) seconds, descending; so the small ones sit together, in groups.
    ordered = sorted(
        tiers[STANDARD], key=lambda a: (a["entry"]["path"] in times, -times.get(a["entry"]["path"], 0))
    )
    return {
        STANDARD: group_entries(ordered, times, slots=slots),
        LARGE: group_entries(tiers[LARGE], {}),
    }


def _with_data(storage: Storage, entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The planned entries with their layer entry object (``data``) from the set's snapshot of their file; an
    entry whose file cannot be read again gets no ``data`` (unknown)."""
    from openaddr.sources import parse_source

    files: dict[str, dict[tuple[str, str], Any]] = {}
    found = []
    for entry in entries:
        key = entry["source_key"]
        if key not in files:
            try:
                source = parse_source(storage.get_bytes(key), entry["path"])
                files[key] = {(e.layer, e.name): e.data for e in source.entries()}
            except Exception:
                log.warning("%s: cannot read it again to estimate its entries", entry["path"], exc_info=True)
                files[key] = {}
        found.append({**entry, "data": files[key].get((entry["layer"], entry["name"])) or {}})
    return found


def by_tier(arguments: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Task arguments (:func:`task_arguments`) split by their entry's tier, order kept: ``{"standard": […],
    "large": […]}``, every tier present (an empty list maps to no task instance)."""
    tiers: dict[str, list[dict[str, Any]]] = {tier: [] for tier in TIERS}
    for argument in arguments:
        tiers[argument["entry"].get("size") or STANDARD].append(dict(argument))
    return tiers


def finish_ci_job(engine: sa.Engine, job_id: str) -> dict[str, Any]:
    """``finish_job``: recompute the job's file states and status from its runs; return the job row.

    :raises TriggerError: the job was never recorded (its trigger could not be planned)
    """
    if db_jobs.get_job(engine, job_id) is None:
        raise TriggerError(f"job {job_id} was never planned: see plan_job")
    return db_jobs.update_job(engine, job_id)
