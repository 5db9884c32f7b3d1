"""The Machine's steps: what each Airflow task of the CI and batch DAGs does, as plain Python (machine-ci.md §4–§6).

Every task body in ``dags/`` is one call into this module; nothing here imports Airflow. The database is a
SQLAlchemy engine of the Machine database (:mod:`openaddr.db`), storage an :class:`openaddr.storage.Storage`.

The flow of a CI job (DAG ``openaddr_ci``):

1. :func:`plan_ci_job` records the job if the webhook has not, stores a snapshot of each changed source file under
   ``jobs/<job id>/sources/``, expands the files into layer entries (:class:`PlannedEntry`) and records a failed run
   for every file that cannot be read or fails strict validation (problem *invalid_source*);
2. :func:`process_source` runs once per entry (a mapped task): reuse a recent run of the same entry (§5 step 1) or
   run ``openaddr process-one`` in a subprocess with the entry's deadline and a memory limit, publish its outputs
   under ``runs/<run id>/`` and record the run; source failures are recorded, never raised;
3. :func:`finish_ci_job` recomputes the job's status.

A batch (DAG ``openaddr_batch``): :func:`create_batch_set` (list the sources at one commit, record the set, store
the snapshot under ``sets/<set id>/sources/``), :func:`plan_batch_set` (entries slowest first), :func:`process_source`
per entry, :func:`complete_batch_set`.

Why a subprocess per entry: processing runs GDAL, PROJ and Arrow over untrusted files for up to three hours. In a
child process a segfault, a memory blow-up or a hung C call ends that run only ("Something went wrong in
openaddr-process-one", "Ran out of memory", "Timed out after …"), the deadline is enforced by killing the child's
process group, and every byte of memory goes back to the OS when the child exits. It costs one interpreter start and
the imports per entry (measured by ``make bench-batch``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Literal

import openaddr
from openaddr.db import jobs as db_jobs, runs as db_runs
from openaddr.errors import SourceFileError, SourceProblem
from openaddr.outputs import STATE_KEYS
from openaddr.process_one import DEFAULT_TIMEOUT_HOURS
from openaddr.storage import public_state, read_state

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import sqlalchemy as sa

    from openaddr.sources_repo import SourceListing
    from openaddr.storage import Storage

log = logging.getLogger(__name__)

Kind = Literal["ci", "batch"]

#: Resource tiers of a layer entry (``conform.size``, processing.md §2): ``large`` entries run in their own pool
#: and Celery queue, on workers with more memory and disk, under a higher memory limit (machine-ci.md §3.3).
STANDARD: Final = "standard"
LARGE: Final = "large"
TIERS: Final = (STANDARD, LARGE)
#: Environment variables: bytes of address space the processing subprocess of each tier may use; 0 turns the limit
#: off.
MEMORY_LIMIT_VARIABLE = "OPENADDR_MEMORY_LIMIT"
LARGE_MEMORY_LIMIT_VARIABLE = "OPENADDR_LARGE_MEMORY_LIMIT"
#: Default memory limit of one processing subprocess. Address space, not resident memory: GDAL, PROJ and Arrow
#: reserve far more than they touch, so this is a guard against runaway growth, not a budget.
DEFAULT_MEMORY_LIMIT = 16 * 2**30
#: The same for a ``large`` entry (nationwide FileGDBs: GDAL's indexes and caches grow with the layer).
DEFAULT_LARGE_MEMORY_LIMIT = 64 * 2**30
#: Grouping of the nightly batch: a task instance costs Airflow about 1.9 s of worker time on the 2-core
#: development machine (benchmarks/README.md), more than a small source takes to process. So entries whose
#: previous run took less than :data:`SMALL_ENTRY_SECONDS` are processed up to :data:`GROUP_SIZE` to a task, up to
#: :data:`GROUP_BUDGET_SECONDS` of previous run time per task. Entries without a previous time, slower ones and
#: large ones keep a task each; CI never groups (one task, one status line, per entry).
SMALL_ENTRY_SECONDS = 60.0
GROUP_SIZE = 10
GROUP_BUDGET_SECONDS = 300.0
#: Seconds the processing subprocess may outlive its own deadline (it stops itself at the deadline; this is the
#: hard stop for a child stuck in C code).
KILL_GRACE_SECONDS = 60.0
#: Largest CI trigger accepted, as the webhook caps it (§2.1 step 10).
MAX_CI_FILES = 200

#: How running out of address space shows in a child's log, in lower case: Python, C++, libc, the dynamic loader
#: (a shared library that cannot be mapped while importing), thread creation.
_OOM_MARKERS = (
    b"memoryerror",
    b"std::bad_alloc",
    b"cannot allocate memory",
    b"out of memory",
    b"failed to map segment from shared object",
    b"can't start new thread",
)


# --------------------------------------------------------------------------------------------------------------
# What is planned and who owns a run
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedEntry:
    """One layer entry to process: the argument of one mapped ``process_source`` task (kept small for XCom).

    :param path: the source file in the sources repository, ``sources/us/wy/park.json``
    :param layer: layer type
    :param name: entry name
    :param source_key: storage key of the snapshot of the source file this run reads
    :param blob_sha: git blob sha of the source file
    :param digest: :func:`openaddr.db.runs.layer_digest` of the entry
    :param timeout: seconds the entry may take (its ``timeout`` hours, else 3 hours)
    :param size: resource tier, :data:`STANDARD` or :data:`LARGE` (``conform.size``)
    """

    path: str
    layer: str
    name: str
    source_key: str
    blob_sha: str | None
    digest: str
    timeout: float
    size: str = STANDARD

    @property
    def label(self) -> str:
        """``us/wy/park/addresses/primary``: how the Airflow UI names the mapped task instance."""
        return f"{source_name(self.path)}/{self.layer}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-compatible dict, with its label."""
        return {**dataclasses.asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedEntry:
        """The entry from :meth:`to_dict` (extra keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class RunOwner:
    """The job or set a run belongs to.

    :param kind: ``ci`` or ``batch`` (selects the reuse window, §5 step 1)
    :param job_id: the CI job
    :param set_id: the batch set
    :param commit_sha: the commit the sources were read at
    :param rerun: a re-run request: never reuse
    """

    kind: Kind
    job_id: str | None = None
    set_id: int | None = None
    commit_sha: str | None = None
    rerun: bool = False


@dataclass(frozen=True)
class SourceSnapshot:
    """A source file as a job or set reads it.

    :param path: ``sources/….json``
    :param blob_sha: its git blob sha
    :param content: its bytes
    """

    path: str
    blob_sha: str | None
    content: bytes


class TriggerError(ValueError):
    """A CI trigger's conf that cannot be planned (no files, a path outside ``sources/``, bad base64, too many
    files): retrying cannot help, the DAG run fails at once with this message."""


def source_name(path: str) -> str:
    """``us/wy/park`` for ``sources/us/wy/park.json``."""
    name = path[len("sources/") :] if path.startswith("sources/") else path
    return name[: -len(".json")] if name.endswith(".json") else name


def worker_id() -> str:
    """``hostname/pid`` of this process (``runs.worker_id``)."""
    return f"{socket.gethostname()}/{os.getpid()}"[:64]


def check_source_path(path: str) -> str:
    """``path`` when it is a source file path, ``sources/….json`` without empty, ``.`` or ``..`` segments.

    :raises TriggerError: it is not
    """
    # Split by hand: PurePosixPath would hide "//" and "." segments, which become odd storage keys.
    parts = path.split("/")
    if (
        len(parts) < 2
        or parts[0] != "sources"
        or not path.endswith(".json")
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in path
    ):
        raise TriggerError(f"not a source file path: {path!r} (expected sources/….json)")
    return path


# --------------------------------------------------------------------------------------------------------------
# Planning: expand source files into layer entries
# --------------------------------------------------------------------------------------------------------------


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
    with tempfile.TemporaryDirectory(prefix="openaddr-plan-") as folder:
        for snapshot in files:
            planned += _plan_file(engine, storage, snapshot, Path(folder), prefix=prefix, owner=owner)
    return planned


def _plan_file(
    engine: sa.Engine,
    storage: Storage,
    snapshot: SourceSnapshot,
    folder: Path,
    *,
    prefix: str,
    owner: RunOwner,
) -> list[PlannedEntry]:
    from openaddr.sources import load_source
    from openaddr.validation import validate_source

    path = check_source_path(snapshot.path)
    key = f"{prefix}/{path[len('sources/') :]}"
    storage.put_bytes(snapshot.content, key, content_type="application/json")
    # load_source reads a file, and names the source after it: keep the repository path.
    local = folder / path
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(snapshot.content)
    try:
        source = load_source(local)
        # Only strict (schema 2) files are invalid; for the others the lines are warnings (processing.md §2.5).
        errors = validate_source(source) if source.strict else []
        entries = source.entries()
    except SourceFileError as exc:
        errors, entries, source = [str(exc)], [], None
    except Exception as exc:  # a document too malformed to expand must fail alone, not stop the whole job
        log.warning("%s: cannot read its layers", path, exc_info=True)
        errors, entries, source = [f"{path}: cannot read its layers: {exc!r}"], [], None
    finally:
        local.unlink(missing_ok=True)
    if errors:
        first = errors[0].replace(str(local), path)
        log.warning("%s is invalid (%d errors): %s", path, len(errors), first)
        targets = [(entry.layer, entry.name, entry.data) for entry in entries] or [(None, None, {})]
        recorded = _recorded_entries(engine, owner, path)
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
        hours = entry.data.get("timeout")
        try:
            timeout = float(hours) * 3600.0 if hours is not None and float(hours) > 0 else None
        except (TypeError, ValueError):
            timeout = None
        planned.append(
            PlannedEntry(
                path=path,
                layer=entry.layer,
                name=entry.name,
                source_key=key,
                blob_sha=snapshot.blob_sha,
                digest=db_runs.layer_digest(coverage, entry.data),
                timeout=timeout or DEFAULT_TIMEOUT_HOURS * 3600.0,
                size=entry_size(entry.data),
            )
        )
    return planned


def entry_size(data: Mapping[str, Any]) -> str:
    """The resource tier of a layer entry: :data:`LARGE` when its ``conform.size`` says so, else :data:`STANDARD`."""
    conform = data.get("conform")
    size = conform.get("size") if isinstance(conform, dict) else None
    return LARGE if isinstance(size, str) and size.strip().lower() == LARGE else STANDARD


def _recorded_entries(engine: sa.Engine, owner: RunOwner, path: str) -> set[tuple[str | None, str | None]]:
    """(layer, name) of the runs the job or set already has for ``path``."""
    import sqlalchemy as sa

    from openaddr.db.schema import runs

    if owner.job_id is None and owner.set_id is None:
        return set()
    column, value = (
        (runs.c.job_id, owner.job_id) if owner.job_id is not None else (runs.c.set_id, owner.set_id)
    )
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(runs.c.source_layer, runs.c.layer_name).where(
                column == value, runs.c.source_path == path
            )
        ).all()
    return {(row.source_layer, row.layer_name) for row in rows}


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
    """The job of a CI trigger: ``conf["job_id"]``, else one derived from the DAG run id (a manual trigger)."""
    job_id = str(conf.get("job_id") or dag_run_id.removeprefix("ci__"))[:40]
    return RunOwner(
        "ci",
        job_id=job_id,
        commit_sha=conf.get("commit_sha"),
        rerun=bool(conf.get("rerun") or conf.get("is_rerun")),
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
    github = conf.get("github") if isinstance(conf.get("github"), dict) else conf
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
) -> list[dict[str, Any]]:
    """Batch task arguments ``{"entries": [entry, …], "run_owner": …}``, in the order given.

    Consecutive entries whose path took less than ``small`` seconds in the previous set (``times``, as
    :func:`openaddr.db.runs.previous_run_times`) share a task: up to ``size`` of them and ``budget`` seconds of
    previous time. Any other entry (no previous time, slower, or large) has a task of its own.

    :param arguments: :func:`task_arguments` of one owner, slowest first
    """
    groups: list[dict[str, Any]] = []
    current: list[Mapping[str, Any]] = []
    spent = 0.0

    def close() -> None:
        nonlocal current, spent
        if current:
            groups.append({"entries": [a["entry"] for a in current], "run_owner": current[0]["run_owner"]})
        current, spent = [], 0.0

    for argument in arguments:
        seconds = times.get(argument["entry"]["path"])
        if seconds is None or seconds >= small or argument["entry"].get("size") == LARGE:
            close()
            current = [argument]
            close()
            continue
        if current and (len(current) >= size or spent + seconds > budget):
            close()
        current.append(argument)
        spent += seconds
    close()
    return groups


def batch_task_groups(
    engine: sa.Engine, set_id: int, arguments: Iterable[Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """``list_sources``'s result: the planned entries by tier (:func:`by_tier`), the standard ones grouped by the
    previous set's times (:func:`group_entries`), the large ones a task each."""
    tiers = by_tier(arguments)
    return {
        STANDARD: group_entries(tiers[STANDARD], db_runs.previous_run_times(engine, set_id)),
        LARGE: group_entries(tiers[LARGE], {}),
    }


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


# --------------------------------------------------------------------------------------------------------------
# Batch sets
# --------------------------------------------------------------------------------------------------------------


def create_batch_set(
    engine: sa.Engine,
    storage: Storage,
    listing: SourceListing,
    *,
    dag_run_id: str | None,
) -> int:
    """``create_set``: record a set for the listed commit and store its source files under ``sets/<id>/sources/``
    with a manifest ``sets/<id>/sources.json`` (``{path: blob sha}``); return the set id.

    Idempotent per DAG run: a retried task finds its set and rewrites the same snapshot.
    """
    set_id = db_jobs.create_set(
        engine,
        owner=listing.owner,
        repository=listing.repository,
        commit_sha=listing.commit_sha,
        airflow_dag_run_id=dag_run_id,
    )
    prefix = f"sets/{set_id}/sources"
    for source in listing.files:
        storage.put_bytes(source.content, f"{prefix}/{check_source_path(source.path)[len('sources/') :]}")
    manifest = {source.path: source.blob_sha for source in listing.files}
    storage.put_bytes(json.dumps(manifest, indent=0).encode(), f"sets/{set_id}/sources.json")
    log.info("Set %d: %d source files at %s", set_id, len(listing.files), listing.commit_sha)
    return set_id


def plan_batch_set(engine: sa.Engine, storage: Storage, set_id: int) -> list[dict[str, Any]]:
    """``list_sources``: expand the set's source files into entries, slowest first (§6); return the
    ``process_source`` arguments (:func:`task_arguments`).

    Order: paths without a previous time first, alphabetically, then by the previous set's cache + process time,
    descending. Mapped task instances are scheduled in map-index order among equal priority weights, so this order
    is the order in which free worker slots take them.
    """
    from openaddr.db.runs import previous_run_times, slowest_first

    record = db_jobs.get_set(engine, set_id)
    if record is None:
        raise LookupError(f"set {set_id} does not exist")
    manifest: dict[str, str | None] = json.loads(storage.get_bytes(f"sets/{set_id}/sources.json"))
    prefix = f"sets/{set_id}/sources"
    files = [
        SourceSnapshot(path, manifest[path], storage.get_bytes(f"{prefix}/{path[len('sources/') :]}"))
        for path in slowest_first(list(manifest), previous_run_times(engine, set_id))
    ]
    owner = RunOwner("batch", set_id=set_id, commit_sha=record["commit_sha"])
    entries = plan_sources(engine, storage, files, prefix=prefix, owner=owner)
    log.info("Set %d: %d entries of %d files to process", set_id, len(entries), len(files))
    return task_arguments(entries, owner)


def complete_batch_set(engine: sa.Engine, set_id: int) -> dict[str, int]:
    """``complete_set``: mark the set complete; return counts of its runs (``runs``, ``succeeded``, ``failed``,
    ``reused``)."""
    db_jobs.complete_set(engine, set_id)
    rows = db_runs.set_runs(engine, set_id)
    return {
        "runs": len(rows),
        "succeeded": sum(1 for row in rows if row["status"] is True),
        "failed": sum(1 for row in rows if row["status"] is False),
        "reused": sum(1 for row in rows if row["copy_of"] is not None),
    }


# --------------------------------------------------------------------------------------------------------------
# Processing one entry
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildResult:
    """How the processing subprocess ended.

    :param returncode: its exit status (negative: killed by that signal)
    :param timed_out: it was killed at the deadline
    :param out_of_memory: it ran out of memory
    :param seconds: wall time
    """

    returncode: int | None
    timed_out: bool
    out_of_memory: bool
    seconds: float


def memory_limit(env: Mapping[str, str] | None = None, size: str = STANDARD) -> int | None:
    """Bytes of address space a processing subprocess of the tier may use (``OPENADDR_MEMORY_LIMIT``, for
    ``large`` entries ``OPENADDR_LARGE_MEMORY_LIMIT``), or None for no limit."""
    variable, default = (
        (LARGE_MEMORY_LIMIT_VARIABLE, DEFAULT_LARGE_MEMORY_LIMIT)
        if size == LARGE
        else (MEMORY_LIMIT_VARIABLE, DEFAULT_MEMORY_LIMIT)
    )
    raw = (os.environ if env is None else env).get(variable, "").strip()
    value = int(raw) if raw else default
    return value if value > 0 else None


def format_bytes(count: int) -> str:
    """``16 GiB``, ``512 MiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} B"


def run_process_one(
    source_file: Path,
    out: Path,
    *,
    layer: str,
    name: str,
    timeout: float,
    log_path: Path,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildResult:
    """Run ``openaddr process-one`` for one entry in a child process, in its own process group.

    The child gets the entry's deadline itself; it is killed (the whole group, with any worker processes it forked)
    ``KILL_GRACE_SECONDS`` after it, or at once when this process is interrupted (e.g. by Airflow's
    ``execution_timeout``).

    :param source_file: the source file (its name gives the source id)
    :param out: the ``--out`` folder
    :param timeout: seconds
    :param log_path: where the child's stdout and stderr go
    :param limit: address-space limit in bytes (None: no limit)
    :param env: the child's environment (default: this process's)
    """
    command = [sys.executable, "-m", "openaddr", "process-one", str(source_file), "--out", str(out)]
    command += ["--layer", layer, "--name", name]

    def set_limit() -> None:  # runs in the child before exec
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # The child's temporary files go inside the work folder, which the caller removes even after a kill.
    child_env = dict(os.environ if env is None else env)
    child_env["TMPDIR"] = str(log_path.parent / "tmp")
    (log_path.parent / "tmp").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as stream:
        child = subprocess.Popen(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=set_limit,
            env=child_env,
        )
        timed_out = False
        try:
            returncode: int | None = child.wait(timeout=timeout + KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(child)
            returncode = child.returncode
        except BaseException:
            _kill_group(child)
            raise
    tail = _tail(log_path)
    # Looked for whatever the exit status: the child may catch the error and record it as a conform failure.
    tail = tail.lower()
    out_of_memory = not timed_out and (
        any(marker in tail for marker in _OOM_MARKERS) or returncode == -signal.SIGKILL
    )
    return ChildResult(returncode, timed_out, out_of_memory, time.monotonic() - started)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _tail(path: Path, size: int = 16384) -> bytes:
    if not path.is_file():
        return b""
    with path.open("rb") as stream:
        stream.seek(max(0, path.stat().st_size - size))
        return stream.read()


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
) -> dict[str, Any]:
    """``process_source``: reuse or process one layer entry, publish its outputs, record its run (§5).

    Source failures are recorded, not raised: the return value says what happened. Infrastructure errors (storage,
    database) propagate, so Airflow retries the task; a retry overwrites the same run (one run per task instance).

    :param entry: the planned entry
    :param owner: the job or set
    :param scratch: a folder for this attempt's work (deleted afterwards)
    :param task: the Airflow task instance and attempt
    :param limit: memory limit of the subprocess (default: :func:`memory_limit` of the entry's tier)
    :param env: environment of the subprocess
    :param started: when the attempt started (default: now)
    :return: ``{run_id, status, message, skipped, copy_of, source_problem, address_count, seconds, label}``
    """
    entry = entry if isinstance(entry, PlannedEntry) else PlannedEntry.from_dict(entry)
    started = started or db_runs.utcnow()
    common = {"source_path": entry.path, "source_layer": entry.layer, "layer_name": entry.name}

    if not owner.rerun:
        reusable = db_runs.find_reusable_run(engine, **common, layer_digest=entry.digest, kind=owner.kind)
        if reusable is not None:
            run_id = db_runs.copy_run(
                engine,
                reusable["id"],
                job_id=owner.job_id,
                set_id=owner.set_id,
                commit_sha=owner.commit_sha,
                task=task,
            )
            return _finish(engine, owner, entry, run_id, seconds=0.0)

    content = storage.get_bytes(entry.source_key)
    run_id = db_runs.insert_run(
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
    work = scratch / f"run-{run_id}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        source_file = work / entry.path
        source_file.parent.mkdir(parents=True)
        source_file.write_bytes(content)
        out, log_path = work / "out", work / "process-one.log"
        limit = memory_limit(size=entry.size) if limit is None else limit
        child = run_process_one(
            source_file,
            out,
            layer=entry.layer,
            name=entry.name,
            timeout=entry.timeout,
            log_path=log_path,
            limit=limit,
            env=env,
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
            and b"Timed out after" in _tail(state_dir / "output.txt")
        )
        if timed_out:
            state = None
        elif child.out_of_memory and (crashed or (state or {}).get("source problem")):
            message = f"Ran out of memory (limit {format_bytes(limit)})" if limit else "Ran out of memory"
        db_runs.finish_run(
            engine,
            run_id,
            state=None if crashed else state,
            attempt_started=started,
            try_number=task.try_number if task else None,
            message=message,
            crashed=crashed,
            timed_out=dt.timedelta(seconds=entry.timeout) if timed_out else None,
            process_hash=_package_md5(state_dir) if not crashed else None,
            stats=_read_json(state_dir / "stats.json"),
            worker_id=worker_id(),
        )
        return _finish(engine, owner, entry, run_id, seconds=child.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def process_entries(
    engine: sa.Engine,
    storage: Storage,
    entries: Sequence[PlannedEntry | Mapping[str, Any]],
    owner: RunOwner,
    *,
    scratch: Path,
    task: db_runs.AirflowTask | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """A batch task's group: :func:`process_source` for each entry in turn, entry *i* in slot *i* of the task.

    A retried attempt keeps what an earlier attempt finished (its runs are not processed again) and goes on from
    the first entry without a result; an infrastructure error stops the group and propagates, as for one entry.

    :return: one summary per entry (:func:`process_source`)
    """
    results = []
    for slot, entry in enumerate(entries):
        planned = entry if isinstance(entry, PlannedEntry) else PlannedEntry.from_dict(entry)
        slot_task = dataclasses.replace(task, slot=slot) if task is not None else None
        if slot_task is not None and slot_task.try_number > 1:
            earlier = db_runs.task_run(engine, slot_task)
            if earlier is not None and earlier["status"] is not None:
                results.append(_finish(engine, owner, planned, earlier["id"], seconds=0.0))
                continue
        results.append(
            process_source(engine, storage, planned, owner, scratch=scratch, task=slot_task, **kwargs)
        )
    return results


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


# --------------------------------------------------------------------------------------------------------------
# Task failures seen by the listener
# --------------------------------------------------------------------------------------------------------------


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
    return [run for run_id in recorded if (run := db_runs.get_run(engine, run_id)) is not None]
