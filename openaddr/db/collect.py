"""What collect reads and records (machine-ci.md §8): the runs of a set's entries, and the ``zips`` rows.

**Input runs.** For each layer entry (``source_path``, ``source_layer``, ``layer_name``) that has a run in the set,
the newest run of *all time* (``datetime_tz``, then ``id``) that

1. succeeded, counts as merged — ``is_merged`` true or unknown (null), unlike the results site's "latest"
   (:func:`openaddr.db.results.merged`), since §8 takes runs "merged (or unknown)" — and is not held by the quality
   gate (:func:`openaddr.db.results.accepted`: ``accepted`` true, or not reviewed and without a warning);
2. failing that, the newest failed run (status false) that counts as merged: 7.5.5's "runs to date" listed the
   failures too. The quality gate only holds successes, so it does not apply here.

Pending runs (status null) never count, and unmerged runs (pull requests) never feed a collection.

**Zips.** :func:`record_zips` replaces the current collections in one transaction: every row is marked not current,
then each new row is inserted or replaced (7.5.5 ``collect.py``'s ``UPDATE zips SET is_current = false``, then
``DELETE`` and ``INSERT`` per URL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.results import ENTRY_COLUMNS, accepted
from openaddr.db.runs import transaction, utcnow
from openaddr.db.schema import row_dict, runs, sets, zips

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable

    from openaddr.db.runs import Bind

log = logging.getLogger(__name__)


def merged_or_unknown() -> sa.ColumnElement[bool]:
    """Runs that count as merged for collect (§8): ``is_merged`` true or null."""
    return sa.or_(runs.c.is_merged.is_(True), runs.c.is_merged.is_(None))


def collect_runs_query(set_id: int) -> sa.Select[Any]:
    """The input run of every layer entry of a set (see the module docstring), unordered."""
    in_set = sa.select(*ENTRY_COLUMNS).where(runs.c.set_id == set_id).distinct().subquery("entries_in_set")
    # coalesce, not IS NOT DISTINCT FROM: PostgreSQL can hash-join equalities (the runs table grows every night).
    entry_matches = sa.and_(
        *(
            sa.func.coalesce(runs.c[column.name], "") == sa.func.coalesce(in_set.c[column.name], "")
            for column in ENTRY_COLUMNS
        )
    )
    successful = sa.and_(runs.c.status.is_(True), accepted())
    failed = runs.c.status.is_(False)
    rank = (
        sa.func.row_number()
        .over(
            partition_by=ENTRY_COLUMNS,
            # Successes first, then failures; each newest first.
            order_by=(
                sa.case((runs.c.status.is_(True), 0), else_=1),
                runs.c.datetime_tz.desc(),
                runs.c.id.desc(),
            ),
        )
        .label("entry_rank")
    )
    ranked = (
        sa.select(runs.c.id, rank)
        .where(sa.exists().where(entry_matches), merged_or_unknown(), sa.or_(successful, failed))
        .subquery("ranked")
    )
    return sa.select(runs).join(ranked, ranked.c.id == runs.c.id).where(ranked.c.entry_rank == 1)


def collect_runs(bind: Bind, set_id: int) -> list[dict[str, Any]]:
    """The input run of every layer entry of a set (:func:`collect_runs_query`), as dicts sorted by path, layer
    and name in code-point order (PostgreSQL's collation would sort ``us-ca`` and ``us/ca`` by locale rules, so
    SQLite and PostgreSQL would build different member orders)."""
    with transaction(bind) as connection:
        rows = [row_dict(row) for row in connection.execute(collect_runs_query(set_id)).all()]
    return sorted(
        rows, key=lambda r: (r["source_path"] or "", r["source_layer"] or "", r["layer_name"] or "")
    )


def collect_set(bind: Bind, which: int | str, *, owner: str, repository: str) -> dict[str, Any]:
    """The set to collect: its id, or ``latest``, the newest completed set of ``owner/repository``.

    :raises LookupError: no such set, no completed set of the repository, or the set is not complete
    """
    with transaction(bind) as connection:
        if which == "latest":
            row = connection.execute(
                sa.select(sets)
                .where(
                    sets.c.owner == owner, sets.c.repository == repository, sets.c.datetime_end.is_not(None)
                )
                .order_by(sets.c.datetime_start.desc(), sets.c.id.desc())
                .limit(1)
            ).first()
            if row is None:
                raise LookupError(f"no completed set of {owner}/{repository}")
        else:
            row = connection.execute(sa.select(sets).where(sets.c.id == int(which))).first()
            if row is None:
                raise LookupError(f"set {which} does not exist")
            if row.datetime_end is None:
                raise LookupError(f"set {which} is not complete")
    return row_dict(row)


@dataclass(frozen=True)
class ZipRow:
    """One published collection, as a ``zips`` row.

    :param url: the collection's public URL (primary key)
    :param content_length: its size in bytes
    :param address_count: the address rows it holds
    :param collection: its area (``openaddr.db.schema.COLLECTIONS``)
    :param license_attr: ``""`` or ``"sa"``
    :param layer: null for the CSV address collections, else the layer type of a GeoJSON or GeoParquet collection
    :param format: ``zip`` (the CSV address collections), ``geojsonl`` or ``parquet``
        (:data:`openaddr.db.schema.ZIP_FORMATS`)
    """

    url: str
    content_length: int
    address_count: int
    collection: str
    license_attr: str
    layer: str | None = None
    format: str = "zip"


def record_zips(bind: Bind, rows: Iterable[ZipRow], *, now: dt.datetime | None = None) -> None:
    """Make ``rows`` the current collections, in one transaction: every ``zips`` row becomes not current, then each
    row is inserted (or replaces the row of the same URL) as current, dated ``now``."""
    now = now or utcnow()
    rows = list(rows)
    with transaction(bind) as connection:
        connection.execute(sa.update(zips).values(is_current=False))
        for row in rows:
            connection.execute(sa.delete(zips).where(zips.c.url == row.url))
            connection.execute(
                sa.insert(zips).values(
                    url=row.url,
                    datetime=now,
                    is_current=True,
                    content_length=row.content_length,
                    address_count=row.address_count,
                    collection=row.collection,
                    license_attr=row.license_attr,
                    layer=row.layer,
                    format=row.format,
                )
            )
    log.info("Recorded %d current collections", len(rows))


def current_zips(bind: Bind) -> list[dict[str, Any]]:
    """The current ``zips`` rows, by URL."""
    with transaction(bind) as connection:
        rows = connection.execute(
            sa.select(zips).where(zips.c.is_current.is_(True)).order_by(zips.c.url)
        ).all()
    return [row_dict(row) for row in rows]
