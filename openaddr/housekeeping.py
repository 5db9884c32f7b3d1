"""Housekeeping (machine-ci.md §4, ``openaddr_housekeeping``): delete old runs, their rows and their files.

The original Machine never deleted a run: its ``runs`` table reached about a million rows and slowed the results
site (openaddresses/machine#777). :func:`sweep` deletes every run recorded (``datetime_tz``) more than *retention*
ago (``OPENADDR_RETENTION_DAYS``, 90 days by default) unless one of these rules keeps it:

1. **latest**: it is the newest run of its layer entry (path, layer, name) by one of the definitions the site, the
   health page and the alerts use, :func:`openaddr.db.results.latest_runs_query` with their options: the newest
   recorded run, merged or not; the newest merged run (the health page's last run); the newest merged accepted run;
   the newest merged accepted *successful* run (the entry's "latest" URL, the health page's last success);
2. **collected**: it is an input run of a collection (:func:`openaddr.db.collect.collect_runs_query`, the one
   definition collect uses) of the latest completed set of a repository (what the next collect takes) or of the set
   the current collections (``zips`` rows ``is_current``) were built from (the newest set completed before them);
3. **copied**: another run's ``copy_of`` names it (the copy's state points at the original's files);
4. **held**: the quality gate holds it for review (:func:`openaddr.db.review.held`);
5. **running**: its set or its job has not ended (``datetime_end`` null): its runs may still be written.

Rules 1 and 2 rank the whole table (window functions), so they are read **once**, at the start of the sweep. A run
older than the retention cannot become latest or collected afterwards but for a race this accepts: a set completing
during the sweep whose collect would take a run of an entry that no definition of "latest" names (a job's run whose
merge is not known yet, ``is_merged`` null). Rules 3 to 5 and the age are checked again for every batch, inside the
transaction that deletes it (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises
writers), so a copy made meanwhile keeps its original (and a copy of a run already deleted fails on the foreign key
instead of pointing at nothing).

**Batches.** The old runs are read in pages of ``batch_size`` ids (keyset on ``id``, so that a million rows are never
held at once and each query stays cheap). For each batch:

1. every object below each run's folder ``runs/<id>/`` is listed with its size, :data:`LIST_THREADS` folders at
   a time (the run's published outputs,
   :meth:`openaddr.storage.Storage.publish_run`; a copy has no files of its own: its state points at the
   original's folder, which is not touched);
2. in **one transaction**, the rules 3 to 5 are checked again, and the ``run_reviews`` rows of the runs still to
   delete and then their ``runs`` rows are deleted;
3. once that has committed, the listed objects of the deleted runs are deleted, each run's ``index.json`` and
   ``index.txt`` first (a reader that still sees a run's state sees every file of it). A file already gone is fine.

**Order: rows first, then files.** A row whose files are gone is still listed by the site, its "latest" URLs and the
collections as an available run (and could be copied) while its links are dead; files without a row are invisible
and only cost storage. So a storage error while *listing* a batch stops the sweep before its rows are touched (rows
and files stay), and one while *deleting* files stops it after the rows are gone: the error names the run folders
left behind (orphans, the lesser evil), for an operator to delete (``aws s3 rm --recursive``) when storage answers
again. Either way :class:`SweepError` says which.

Nothing here imports Airflow: the DAG ``openaddr_housekeeping`` and the ``openaddr housekeeping`` command call
:func:`sweep`.
"""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.collect import collect_runs_query, collect_set
from openaddr.db.results import latest_runs_query
from openaddr.db.review import held
from openaddr.db.schema import jobs, run_reviews, runs, sets, zips
from openaddr.errors import OpenaddrError
from openaddr.storage import run_prefix

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from openaddr.storage import Storage

log = logging.getLogger(__name__)

#: Runs deleted per transaction (and per page of the old runs read).
BATCH_SIZE = 500
#: Run folders listed at once (one ``ListObjectsV2`` each on S3, where a request's latency dominates).
LIST_THREADS = 8

#: The definitions of an entry's latest run that keep it (rule 1): ``latest_runs_query`` options, each as the
#: site, the health page or the alerts use it.
LATEST_VIEWS: tuple[Mapping[str, Any], ...] = (
    {"merged_only": False, "accepted_only": False},  # the newest recorded run, merged or not
    {"accepted_only": False},  # the newest merged run: the health page's last run
    {},  # the newest merged accepted run
    {"successful": True},  # the entry's "latest" URL and last success
)

#: The names of a run's state files, deleted first so that a run is never seen half deleted.
_STATE_NAMES = ("index.json", "index.txt")


class SweepError(OpenaddrError):
    """Storage failed during a sweep; the message says whether the batch's rows were kept or its files orphaned.

    :param result: what the sweep had done when it stopped
    """

    def __init__(self, message: str, result: SweepResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class SweepResult:
    """What a sweep did (or, with ``dry_run``, would do).

    :param cutoff: runs recorded before this instant were old enough
    :param dry_run: nothing was deleted; the counts say what would have been
    :param runs_deleted: runs whose rows were deleted
    :param files_deleted: objects deleted from storage
    :param bytes_freed: their total size
    :param reviews_deleted: ``run_reviews`` rows deleted with their runs
    :param kept: old runs kept, by rule: ``latest``, ``collected``, and ``copied, held or running`` (the rules 3
        to 5, counted together)
    :param batches: transactions committed
    """

    cutoff: dt.datetime
    dry_run: bool = False
    runs_deleted: int = 0
    files_deleted: int = 0
    bytes_freed: int = 0
    reviews_deleted: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain JSON values (the DAG task's return value)."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "runs_deleted": self.runs_deleted,
            "files_deleted": self.files_deleted,
            "bytes_freed": self.bytes_freed,
            "reviews_deleted": self.reviews_deleted,
            "kept": dict(self.kept),
            "batches": self.batches,
        }


def _ids(connection: sa.Connection, query: sa.Select[Any]) -> set[int]:
    ranked = query.order_by(None).subquery("kept")
    return {int(value) for value in connection.execute(sa.select(ranked.c.id)).scalars()}


def collected_set_ids(connection: sa.Connection) -> set[int]:
    """The sets whose collect inputs are kept (rule 2): per repository, its latest completed set
    (:func:`openaddr.db.collect.collect_set`) and the newest set completed before the current collections were
    recorded (``zips.datetime``: the collection time, after the set collected was complete)."""
    found: set[int] = set()
    repositories = connection.execute(
        sa.select(sets.c.owner, sets.c.repository)
        .where(sets.c.datetime_end.is_not(None), sets.c.owner.is_not(None), sets.c.repository.is_not(None))
        .distinct()
    ).all()
    collected_at = connection.execute(
        sa.select(sa.func.max(zips.c.datetime)).where(zips.c.is_current.is_(True))
    ).scalar_one_or_none()
    for owner, repository in repositories:
        found.add(int(collect_set(connection, "latest", owner=owner, repository=repository)["id"]))
        if collected_at is not None:
            built_from = connection.execute(
                sa.select(sets.c.id)
                .where(
                    sets.c.owner == owner,
                    sets.c.repository == repository,
                    sets.c.datetime_end.is_not(None),
                    sets.c.datetime_end <= collected_at,
                )
                .order_by(sets.c.datetime_start.desc(), sets.c.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            if built_from is not None:
                found.add(int(built_from))
    return found


def protected_runs(connection: sa.Connection) -> dict[int, str]:
    """The runs rules 1 and 2 keep, with the rule (``latest`` or ``collected``), whatever their age."""
    kept: dict[int, str] = {}
    for options in LATEST_VIEWS:
        for run_id in _ids(connection, latest_runs_query(**options)):
            kept.setdefault(run_id, "latest")
    for set_id in sorted(collected_set_ids(connection)):
        for run_id in _ids(connection, collect_runs_query(set_id)):
            kept.setdefault(run_id, "collected")
    return kept


def deletable(cutoff: dt.datetime) -> list[sa.ColumnElement[bool]]:
    """The conditions a run must meet to be deleted, but for rules 1 and 2: older than ``cutoff``, not copied
    (rule 3), not held (rule 4), its set and job ended (rule 5)."""
    copies = runs.alias("copies")
    return [
        runs.c.datetime_tz < cutoff,
        ~sa.exists().where(copies.c.copy_of == runs.c.id),
        ~held(),
        ~sa.exists().where(sets.c.id == runs.c.set_id, sets.c.datetime_end.is_(None)),
        ~sa.exists().where(jobs.c.id == runs.c.job_id, jobs.c.datetime_end.is_(None)),
    ]


def _state_first(keys: Iterable[str]) -> list[str]:
    """Keys with each run's state files first (the rest in order)."""
    keys = list(keys)
    return [k for k in keys if k.rsplit("/", 1)[-1] in _STATE_NAMES] + [
        k for k in keys if k.rsplit("/", 1)[-1] not in _STATE_NAMES
    ]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def sweep(
    engine: sa.Engine,
    storage: Storage,
    *,
    now: dt.datetime,
    retention: dt.timedelta,
    batch_size: int = BATCH_SIZE,
    dry_run: bool = False,
) -> SweepResult:
    """Delete the runs older than ``retention`` that no rule keeps, with their files (module docstring).

    :param engine: the Machine database (each batch is its own transaction)
    :param storage: the run storage
    :param now: the reference time (timezone-aware)
    :param retention: how long a run is kept at least (``OPENADDR_RETENTION_DAYS``); must be positive
    :param batch_size: runs per transaction
    :param dry_run: delete nothing; count what would be deleted (the files are listed)
    :return: the counts
    :raises ValueError: a retention or batch size that is not positive, or a naive ``now``
    :raises SweepError: storage failed (the message says what was kept and what was orphaned)
    """
    if retention <= dt.timedelta(0):
        raise ValueError(f"the retention must be positive, not {retention}: it would delete every old run")
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {batch_size}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive time {now!r}: give the sweep's time with its zone")
    cutoff = now - retention
    result = SweepResult(cutoff=cutoff, dry_run=dry_run)
    with engine.connect() as connection:
        protected = protected_runs(connection)
        old = sa.select(sa.func.count()).select_from(runs).where(runs.c.datetime_tz < cutoff)
        old_count = int(connection.execute(old).scalar_one())
    log.info(
        "Sweeping runs recorded before %s (%d old runs; %d runs are latest or collected)%s",
        cutoff.isoformat(),
        old_count,
        len(protected),
        " (dry run)" if dry_run else "",
    )
    conditions = deletable(cutoff)
    after = 0
    while True:
        with engine.connect() as connection:
            page = [
                int(value)
                for value in connection.execute(
                    sa.select(runs.c.id)
                    .where(runs.c.id > after, *conditions)
                    .order_by(runs.c.id)
                    .limit(batch_size)
                ).scalars()
            ]
        if not page:
            break
        after = page[-1]
        batch = []
        for run_id in page:
            rule = protected.get(run_id)
            if rule is None:
                batch.append(run_id)
            else:
                result.kept[rule] = result.kept.get(rule, 0) + 1
        if batch:
            _sweep_batch(engine, storage, batch, conditions, result)
    # The rest of the old runs failed the SQL conditions (approximate while other writers run).
    result.kept["copied, held or running"] = max(
        0, old_count - result.runs_deleted - sum(result.kept.values())
    )
    log.info(
        "%s %d runs, %d files, %d bytes; kept %s",
        "Would delete" if dry_run else "Deleted",
        result.runs_deleted,
        result.files_deleted,
        result.bytes_freed,
        ", ".join(f"{count} {rule}" for rule, count in sorted(result.kept.items())) or "none",
    )
    return result


def _sweep_batch(
    engine: sa.Engine,
    storage: Storage,
    batch: list[int],
    conditions: list[sa.ColumnElement[bool]],
    result: SweepResult,
) -> None:
    """List, delete the rows, then delete the files of one batch (module docstring)."""
    files: dict[int, dict[str, int]] = {}
    with ThreadPoolExecutor(max_workers=LIST_THREADS, thread_name_prefix="housekeeping-list") as pool:
        listings = {run_id: pool.submit(storage.list_sizes, run_prefix(run_id)) for run_id in batch}
    for run_id, listing in listings.items():  # in batch order: the first failing run is named
        try:
            files[run_id] = listing.result()
        except Exception as exc:
            raise SweepError(
                f"Housekeeping stopped: could not list the files of run {run_id} ({run_prefix(run_id)}/ in "
                f"{storage!r}): {_describe(exc)}. No row or file of this batch was deleted; "
                f"{result.runs_deleted} runs were deleted before it.",
                result,
            ) from exc
    if result.dry_run:
        with engine.connect() as connection:
            still = [
                int(value)
                for value in connection.execute(
                    sa.select(runs.c.id).where(runs.c.id.in_(batch), *conditions)
                ).scalars()
            ]
        _count(result, files, still)
        return
    with engine.begin() as connection:
        locked = sa.select(runs.c.id).where(runs.c.id.in_(batch), *conditions)
        if connection.dialect.name == "postgresql":
            locked = locked.with_for_update(of=runs)
        deleted = sorted(int(value) for value in connection.execute(locked).scalars())
        if deleted:
            reviews = connection.execute(sa.delete(run_reviews).where(run_reviews.c.run_id.in_(deleted)))
            connection.execute(sa.delete(runs).where(runs.c.id.in_(deleted)))
            result.reviews_deleted += int(reviews.rowcount or 0)
    result.batches += 1
    keys = _state_first(key for run_id in deleted for key in files[run_id])
    try:
        storage.delete_keys(keys)
    except Exception as exc:
        folders = ", ".join(f"{run_prefix(run_id)}/" for run_id in deleted if files[run_id])
        result.runs_deleted += len(deleted)
        raise SweepError(
            f"Housekeeping stopped: the rows of runs {deleted[0]}…{deleted[-1]} ({len(deleted)} runs) were "
            f"deleted, but deleting their files from {storage!r} failed: {_describe(exc)}. These folders may be "
            f"left without a row (orphans; delete them once storage answers): {folders}",
            result,
        ) from exc
    _count(result, files, deleted)
    log.info(
        "Deleted runs %s…%s: %d runs, %d files so far",
        batch[0],
        batch[-1],
        result.runs_deleted,
        result.files_deleted,
    )


def _count(result: SweepResult, files: Mapping[int, Mapping[str, int]], run_ids: Iterable[int]) -> None:
    for run_id in run_ids:
        result.runs_deleted += 1
        result.files_deleted += len(files[run_id])
        result.bytes_freed += sum(files[run_id].values())
