"""What the results site reads (machine-ci.md §9): the runs that count as "latest", per layer entry.

A layer entry is a (``source_path``, ``source_layer``, ``layer_name``) triple. The *latest* run of an entry is its
newest recorded run (status not null) that is **merged** (§2.4: runs of sets, and job runs whose commit is on the
default branch) and **accepted** (§10: ``accepted`` true, or not reviewed and without a warning); only such runs feed
"latest", ``state.txt``, collections and the health page. Ordering is ``datetime_tz`` then ``id``, newest first.

Every function takes an open connection or an engine (see :mod:`openaddr.db.runs`), and returns plain dicts.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.runs import transaction, utcnow
from openaddr.db.schema import row_dict, runs
from openaddr.errors import SourceProblem

if TYPE_CHECKING:
    from collections.abc import Mapping

    from openaddr.db.runs import Bind

#: The columns that name a layer entry.
ENTRY_COLUMNS = (runs.c.source_path, runs.c.source_layer, runs.c.layer_name)


def merged() -> sa.ColumnElement[bool]:
    """Runs that count as merged (§2.4)."""
    return runs.c.is_merged.is_(True)


def accepted() -> sa.ColumnElement[bool]:
    """Runs that count as accepted (§10): accepted, or not reviewed and without a warning."""
    return sa.or_(runs.c.accepted.is_(True), sa.and_(runs.c.accepted.is_(None), runs.c.warning.is_(None)))


def previous_accepted_run(
    bind: Bind,
    *,
    source_path: str,
    source_layer: str | None,
    layer_name: str | None,
    exclude_run_id: int | None = None,
) -> dict[str, Any] | None:
    """The quality gate's baseline (§10): the newest successful, merged, accepted run of an entry with a count
    (skipped runs have none), ordered by ``datetime_tz`` then ``id``; one query. A rejected run or one held by the
    gate is not a baseline, nor is a pull request's run that is not merged.

    :param exclude_run_id: the run being judged
    :return: its ``id``, ``stats`` and ``address_count``, or None (the entry's first run)
    """
    conditions = [
        runs.c.source_path == source_path,
        runs.c.source_layer.is_(None) if source_layer is None else runs.c.source_layer == source_layer,
        runs.c.layer_name.is_(None) if layer_name is None else runs.c.layer_name == layer_name,
        runs.c.status.is_(True),
        merged(),
        accepted(),
        runs.c.address_count.is_not(None),
    ]
    if exclude_run_id is not None:
        conditions.append(runs.c.id != exclude_run_id)
    query = (
        sa.select(runs.c.id, runs.c.stats, runs.c.address_count)
        .where(*conditions)
        .order_by(runs.c.datetime_tz.desc(), runs.c.id.desc())
        .limit(1)
    )
    with transaction(bind) as connection:
        row = connection.execute(query).first()
    return row_dict(row) if row is not None else None


def latest_runs_query(
    *,
    set_id: int | None = None,
    successful: bool = False,
    source_path: str | None = None,
    merged_only: bool = True,
    accepted_only: bool = True,
    exclude_job_id: str | None = None,
) -> sa.Select[Any]:
    """The newest recorded run of every layer entry, as a SELECT of the ``runs`` columns.

    :param set_id: only the runs of this set (a set's own "runs to date")
    :param successful: only successful runs (status true)
    :param source_path: only the entries of this source path
    :param merged_only: only merged runs (§2.4); false for a job's own view
    :param accepted_only: only accepted runs (§10)
    :param exclude_job_id: leave this job's runs out (a job's PR comment compares with what was merged before it)
    """
    conditions: list[sa.ColumnElement[bool]] = [runs.c.status.is_not(None)]
    if set_id is not None:
        conditions.append(runs.c.set_id == set_id)
    if successful:
        conditions.append(runs.c.status.is_(True))
    if source_path is not None:
        conditions.append(runs.c.source_path == source_path)
    if merged_only:
        conditions.append(merged())
    if accepted_only:
        conditions.append(accepted())
    if exclude_job_id is not None:
        conditions.append(sa.or_(runs.c.job_id.is_(None), runs.c.job_id != exclude_job_id))
    rank = (
        sa.func.row_number()
        .over(partition_by=ENTRY_COLUMNS, order_by=(runs.c.datetime_tz.desc(), runs.c.id.desc()))
        .label("entry_rank")
    )
    ranked = sa.select(runs.c.id, rank).where(*conditions).subquery()
    return (
        sa.select(runs)
        .join(ranked, ranked.c.id == runs.c.id)
        .where(ranked.c.entry_rank == 1)
        .order_by(runs.c.source_path, runs.c.source_layer, runs.c.layer_name)
    )


def latest_runs(bind: Bind, **options: Any) -> list[dict[str, Any]]:
    """The newest recorded run of every layer entry, sorted by path, layer and name (options: :func:`latest_runs_query`)."""
    with transaction(bind) as connection:
        rows = connection.execute(latest_runs_query(**options)).all()
    return [row_dict(row) for row in rows]


# --------------------------------------------------------------------------------------------------------------
# A source's timeline (machine-ci.md §9.2)
# --------------------------------------------------------------------------------------------------------------

#: How recent an entry's last accepted merged success must be for the entry to be *healthy* (§9.2).
HEALTHY_WITHIN = dt.timedelta(days=30)
#: Health classes, in the order the health page counts them.
HEALTH_CLASSES = ("healthy", "stale", "never")
#: The source problem of an entry that says to skip.
SKIP_PROBLEM = SourceProblem.skip_source.value
#: Every column of ``runs`` but the source file, which only the latest run needs.
RUN_COLUMNS = [column for column in runs.c if column.name != "source_data"]


def run_label(run: Mapping[str, Any]) -> str:
    """A recorded run's status on the results site: ``pending`` (no status yet), ``failure`` (failed, or rejected by a
    maintainer, §10), ``skipped`` (the source says to skip), ``warning`` (succeeded with a quality gate warning) or
    ``success``."""
    if run.get("status") is None:
        return "pending"
    if not run["status"] or run.get("accepted") is False:
        return "failure"
    state = run.get("state") or {}
    if (isinstance(state, dict) and state.get("skipped")) or run.get("source_problem") == SKIP_PROBLEM:
        return "skipped"
    if run.get("warning"):
        return "warning"
    return "success"


def counts_as_previous(run: Mapping[str, Any]) -> bool:
    """Whether a run is a baseline for the next run's change in % (§10's *previous*): successful, not skipped,
    merged, accepted (``accepted`` true, or not reviewed and without a warning), with an address count."""
    return (
        run.get("status") is True
        and run_label(run) != "skipped"
        and run.get("is_merged") is True
        and (run.get("accepted") is True or (run.get("accepted") is None and not run.get("warning")))
        and run.get("address_count") is not None
    )


def source_runs(bind: Bind, source_path: str) -> list[dict[str, Any]]:
    """Every recorded run (status not null) of a source path, merged or not, newest first (``datetime_tz``, then
    ``id``); without ``source_data``.

    :param source_path: ``sources/….json``
    """
    query = (
        sa.select(*RUN_COLUMNS)
        .where(runs.c.source_path == source_path, runs.c.status.is_not(None))
        .order_by(runs.c.datetime_tz.desc(), runs.c.id.desc())
    )
    with transaction(bind) as connection:
        rows = connection.execute(query).all()
    return [row_dict(row) for row in rows]


def source_timeline(bind: Bind, source_path: str) -> list[dict[str, Any]]:
    """A source's runs per layer entry (§9.2), entries sorted by layer and name, each entry's runs newest first.

    Each entry is ``{"source_layer", "layer_name", "latest", "runs"}``: ``latest`` is the entry's latest run
    (:func:`latest_runs`: merged and accepted) or None. Each run is its columns (without ``source_data``) plus
    ``label`` (:func:`run_label`), ``merged`` (``is_merged`` is true) and ``change``: its address count against the
    *previous* run of the entry (the newest earlier run that :func:`counts_as_previous`), in % (None without a count
    on either side, or when the previous count is 0), with ``previous_id``. Unmerged runs (pull requests' jobs) are
    listed and marked, but are never a previous run nor latest. Empty when the path has no recorded run.

    :param source_path: ``sources/….json``
    """
    with transaction(bind) as connection:
        recorded = source_runs(connection, source_path)
        latest = {
            (run["source_layer"], run["layer_name"]): run
            for run in latest_runs(connection, source_path=source_path)
        }
    grouped: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for run in recorded:
        grouped.setdefault((run["source_layer"], run["layer_name"]), []).append(run)
    entries = []
    for (layer, name), entry_runs in sorted(
        grouped.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")
    ):
        previous: dict[str, Any] | None = None
        for run in reversed(entry_runs):  # oldest first
            run["label"] = run_label(run)
            run["merged"] = run.get("is_merged") is True
            run["change"], run["previous_id"] = None, None
            if previous is not None:
                run["previous_id"] = previous["id"]
                if run["address_count"] is not None and previous["address_count"]:
                    run["change"] = (
                        (run["address_count"] - previous["address_count"]) * 100.0 / previous["address_count"]
                    )
            if counts_as_previous(run):
                previous = run
        latest_run = latest.get((layer, name))
        entries.append(
            {
                "source_layer": layer,
                "layer_name": name,
                "latest": next(
                    (run for run in entry_runs if latest_run and run["id"] == latest_run["id"]), None
                ),
                "runs": entry_runs,
            }
        )
    return entries


def source_document(bind: Bind, source_path: str) -> tuple[int, bytes] | None:
    """The source file as the newest recorded run of the path read it: ``(run id, bytes)``, preferring merged runs
    (the file on the default branch) over pull requests' runs; None when no run kept the file.

    :param source_path: ``sources/….json``
    """
    query = (
        sa.select(runs.c.id, runs.c.source_data)
        .where(runs.c.source_path == source_path, runs.c.source_data.is_not(None), runs.c.status.is_not(None))
        .order_by(sa.case((merged(), 0), else_=1), runs.c.datetime_tz.desc(), runs.c.id.desc())
        .limit(1)
    )
    with transaction(bind) as connection:
        row = connection.execute(query).first()
    return (int(row.id), bytes(row.source_data)) if row is not None else None


def address_entry_order(document: bytes | None) -> list[str]:
    """The names of a source file's address entries in file order (``layers.addresses[].name``); empty for a file
    that does not parse or has no such layer."""
    try:
        data = json.loads(document or b"")
    except ValueError:
        return []
    layers = data.get("layers") if isinstance(data, dict) else None
    entries = layers.get("addresses") if isinstance(layers, dict) else None
    if not isinstance(entries, list):
        return []
    return [str(entry["name"]) for entry in entries if isinstance(entry, dict) and "name" in entry]


def latest_entry_runs(bind: Bind, source_path: str) -> list[dict[str, Any]]:
    """The latest successful run (merged and accepted, :func:`latest_runs`) of each entry of a source path, the
    ``addresses`` entries first in the file's order (:func:`address_entry_order`), then the rest by layer and name.

    :param source_path: ``sources/….json``
    """
    with transaction(bind) as connection:
        latest = latest_runs(connection, source_path=source_path, successful=True)
        document = source_document(connection, source_path)
    order = address_entry_order(document[1] if document else None)

    def key(run: Mapping[str, Any]) -> tuple[int, int, str, str]:
        is_address = run["source_layer"] == "addresses"
        position = order.index(run["layer_name"]) if is_address and run["layer_name"] in order else len(order)
        return (0 if is_address else 1, position, run["source_layer"] or "", run["layer_name"] or "")

    return sorted(latest, key=key)


# --------------------------------------------------------------------------------------------------------------
# Health (machine-ci.md §9.2, §11)
# --------------------------------------------------------------------------------------------------------------


def health_class(last_success: dt.datetime | None, now: dt.datetime) -> str:
    """``healthy`` (a last success within :data:`HEALTHY_WITHIN` of ``now``), ``stale`` (older) or ``never``."""
    if last_success is None:
        return "never"
    if last_success.tzinfo is None:
        last_success = last_success.replace(tzinfo=dt.UTC)
    return "healthy" if now - last_success <= HEALTHY_WITHIN else "stale"


def entry_health(bind: Bind, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The health of every layer entry that has a merged run, sorted by path, layer and name.

    Each item: ``source_path``, ``source_layer``, ``layer_name``, ``health`` (:func:`health_class` of the entry's
    last accepted merged success), ``last_run`` (the newest merged run, accepted or not, so that a run held by the
    quality gate shows as ``warning``) with its ``label``, and ``last_success`` (or None). A run skipped because the
    source says to skip is a success (a maintainer's choice, not a breakage); its label says ``skipped``.

    :param now: the reference time (default: now)
    """
    now = now or utcnow()
    with transaction(bind) as connection:
        last_runs = latest_runs(connection, accepted_only=False)
        successes = {
            (run["source_path"], run["source_layer"], run["layer_name"]): run
            for run in latest_runs(connection, successful=True)
        }
    items = []
    for run in last_runs:
        success = successes.get((run["source_path"], run["source_layer"], run["layer_name"]))
        run.pop("source_data", None)
        if success is not None:
            success.pop("source_data", None)
        items.append(
            {
                "source_path": run["source_path"],
                "source_layer": run["source_layer"],
                "layer_name": run["layer_name"],
                "health": health_class(success["datetime_tz"] if success else None, now),
                "last_run": {**run, "label": run_label(run)},
                "last_success": success,
            }
        )
    return items
