"""What the results site reads (machine-ci.md §9): the runs that count as "latest", per layer entry.

A layer entry is a (``source_path``, ``source_layer``, ``layer_name``) triple. The *latest* run of an entry is its
newest recorded run (status not null) that is **merged** (§2.4: runs of sets, and job runs whose commit is on the
default branch) and **accepted** (§10: ``accepted`` true, or not reviewed and without a warning); only such runs feed
"latest", ``state.txt``, collections and the health page. Ordering is ``datetime_tz`` then ``id``, newest first.

Every function takes an open connection or an engine (see :mod:`openaddr.db.runs`), and returns plain dicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.runs import transaction
from openaddr.db.schema import row_dict, runs

if TYPE_CHECKING:
    from openaddr.db.runs import Bind

#: The columns that name a layer entry.
ENTRY_COLUMNS = (runs.c.source_path, runs.c.source_layer, runs.c.layer_name)


def merged() -> sa.ColumnElement[bool]:
    """Runs that count as merged (§2.4)."""
    return runs.c.is_merged.is_(True)


def accepted() -> sa.ColumnElement[bool]:
    """Runs that count as accepted (§10): accepted, or not reviewed and without a warning."""
    return sa.or_(runs.c.accepted.is_(True), sa.and_(runs.c.accepted.is_(None), runs.c.warning.is_(None)))


def latest_runs_query(
    *,
    set_id: int | None = None,
    successful: bool = False,
    source_path: str | None = None,
    merged_only: bool = True,
    accepted_only: bool = True,
) -> sa.Select[Any]:
    """The newest recorded run of every layer entry, as a SELECT of the ``runs`` columns.

    :param set_id: only the runs of this set (a set's own "runs to date")
    :param successful: only successful runs (status true)
    :param source_path: only the entries of this source path
    :param merged_only: only merged runs (§2.4); false for a job's own view
    :param accepted_only: only accepted runs (§10)
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
