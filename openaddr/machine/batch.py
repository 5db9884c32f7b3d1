"""Batch sets: record a set of the sources at one commit, plan it, complete it (DAG ``openaddr_batch``,
machine-ci.md §6)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from openaddr.db import jobs as db_jobs, runs as db_runs
from openaddr.machine.entries import RunOwner, SourceSnapshot, check_source_path
from openaddr.machine.planning import plan_sources, task_arguments

if TYPE_CHECKING:
    import sqlalchemy as sa

    from openaddr.sources_repo import SourceListing
    from openaddr.storage import Storage

log = logging.getLogger(__name__)


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
