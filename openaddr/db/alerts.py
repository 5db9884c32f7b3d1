"""Queries of alerting (machine-ci.md §11): what happened to a set, which entries are broken, which sets stalled,
which alerts were already sent, and the e-mail subscriptions to a source file.

Every function takes an open connection or an engine (see :mod:`openaddr.db.runs`) and returns plain values.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.results import ENTRY_COLUMNS, latest_runs, merged, run_label
from openaddr.db.runs import transaction, utcnow
from openaddr.db.schema import alerts, row_dict, runs, sets, subscriptions

if TYPE_CHECKING:
    from collections.abc import Iterable

    from openaddr.db.runs import Bind

#: Run columns the alerts read (never ``source_data`` nor ``state``'s bulk beyond what :func:`run_label` needs).
_RUN_COLUMNS = [column for column in runs.c if column.name != "source_data"]


# ----------------------------------------------------------------------------------------------------------------
# Alerts already decided
# ----------------------------------------------------------------------------------------------------------------


def alert_sent(bind: Bind, kind: str, key: str) -> bool:
    """Whether an alert of this kind and key was recorded (sent, or decided while alerts were off)."""
    with transaction(bind) as connection:
        found = connection.execute(
            sa.select(alerts.c.id).where(alerts.c.kind == kind, alerts.c.key == key)
        ).first()
    return found is not None


def record_alert(
    bind: Bind, kind: str, key: str, *, channels: Iterable[str], subject: str, now: dt.datetime | None = None
) -> bool:
    """Record an alert; return False when one of the same kind and key was already recorded (nothing changes).

    :param channels: where it went (``email``, ``slack``); empty when alerts are off
    """
    values = {
        "kind": kind,
        "key": key,
        "datetime": now or utcnow(),
        "channels": ",".join(channels),
        "subject": subject,
    }
    try:
        with transaction(bind) as connection, connection.begin_nested():
            connection.execute(sa.insert(alerts).values(values))
    except sa.exc.IntegrityError:
        return False
    return True


def latest_alert(bind: Bind) -> dict[str, Any] | None:
    """The newest recorded alert (what the health page says about alerting), or None."""
    with transaction(bind) as connection:
        row = connection.execute(
            sa.select(alerts).order_by(alerts.c.datetime.desc(), alerts.c.id.desc()).limit(1)
        ).first()
    return row_dict(row) if row is not None else None


# ----------------------------------------------------------------------------------------------------------------
# Sets
# ----------------------------------------------------------------------------------------------------------------


def set_outcome(bind: Bind, set_id: int) -> dict[str, Any]:
    """A set's runs by outcome: ``success``, ``failure``, ``warning`` (held for review), ``skipped``, ``pending``
    counts, and ``new_failures``: its failed runs whose entry's previous merged run (before this one, of another
    set or a merged job) did not fail, or that have no previous run, as dicts (path, layer, name, id, message).

    :raises LookupError: no set has this id
    """
    with transaction(bind) as connection:
        found = connection.execute(sa.select(sets).where(sets.c.id == set_id)).first()
        if found is None:
            raise LookupError(f"set {set_id} does not exist")
        rows = [
            row_dict(row)
            for row in connection.execute(
                sa.select(*_RUN_COLUMNS).where(runs.c.set_id == set_id).order_by(*ENTRY_COLUMNS, runs.c.id)
            )
        ]
        counts = {"success": 0, "failure": 0, "warning": 0, "skipped": 0, "pending": 0}
        failed = []
        for run in rows:
            label = run_label(run)
            counts[label] += 1
            if label == "failure":
                failed.append(run)
        previous = _previous_labels(connection, set_id, [run["id"] for run in failed])
        new_failures = [
            {
                key: run[key]
                for key in ("id", "source_path", "source_layer", "layer_name", "message", "source_problem")
            }
            for run in failed
            if previous.get(run["id"]) != "failure"
        ]
    return {"set": row_dict(found), **counts, "new_failures": new_failures}


def _previous_labels(connection: sa.Connection, set_id: int, run_ids: list[int]) -> dict[int, str]:
    """Per run id, the :func:`run_label` of its entry's previous merged recorded run (the newest one not of this
    set, recorded at or before it); a run without one is not in the answer. One query (a window over the entry's
    earlier runs, ``runs_entry_latest``), in chunks of 1,000 ids."""
    labels: dict[int, str] = {}
    failed = runs.alias("failed")
    earlier = runs.alias("earlier")
    for start in range(0, len(run_ids), 1000):
        rank = (
            sa.func.row_number()
            .over(partition_by=failed.c.id, order_by=(earlier.c.datetime_tz.desc(), earlier.c.id.desc()))
            .label("rank")
        )
        ranked = (
            sa.select(
                failed.c.id.label("run_id"),
                earlier.c.status,
                earlier.c.accepted,
                earlier.c.state,
                earlier.c.source_problem,
                earlier.c.warning,
                rank,
            )
            .join(
                earlier,
                sa.and_(
                    earlier.c.source_path == failed.c.source_path,
                    earlier.c.source_layer.is_not_distinct_from(failed.c.source_layer),
                    earlier.c.layer_name.is_not_distinct_from(failed.c.layer_name),
                    earlier.c.status.is_not(None),
                    earlier.c.is_merged.is_(True),
                    earlier.c.id != failed.c.id,
                    sa.or_(earlier.c.set_id.is_(None), earlier.c.set_id != set_id),
                    earlier.c.datetime_tz <= failed.c.datetime_tz,
                ),
            )
            .where(failed.c.id.in_(run_ids[start : start + 1000]))
            .subquery()
        )
        for row in connection.execute(sa.select(ranked).where(ranked.c.rank == 1)):
            labels[row.run_id] = run_label(row_dict(row))
    return labels


def stalled_sets(bind: Bind, *, now: dt.datetime, older_than: dt.timedelta) -> list[dict[str, Any]]:
    """Scheduled sets (their DAG run id starts ``scheduled__``) started more than ``older_than`` before ``now`` and
    still not complete, oldest first."""
    with transaction(bind) as connection:
        rows = connection.execute(
            sa.select(sets)
            .where(
                sets.c.datetime_end.is_(None),
                sets.c.datetime_start < now - older_than,
                sets.c.airflow_dag_run_id.like("scheduled\\_\\_%", escape="\\"),
            )
            .order_by(sets.c.datetime_start, sets.c.id)
        ).all()
    return [row_dict(row) for row in rows]


# ----------------------------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------------------------


def entries_without_success(
    bind: Bind, *, now: dt.datetime, longer_than: dt.timedelta
) -> list[dict[str, Any]]:
    """Layer entries with a merged run and no accepted merged success for more than ``longer_than``: their last
    accepted success (a skip counts) is older, or they never had one and their first merged run is older.

    Each item: ``source_path``, ``source_layer``, ``layer_name``, ``last_success`` (its run id and time, or None),
    ``since`` (the time from which the entry counts as broken) and ``last_run`` (id, message, problem).
    """
    cutoff = now - longer_than
    with transaction(bind) as connection:
        last_runs = latest_runs(connection, accepted_only=False)
        successes = {
            (run["source_path"], run["source_layer"], run["layer_name"]): run
            for run in latest_runs(connection, successful=True)
        }
        firsts = {
            (row.source_path, row.source_layer, row.layer_name): row.first
            for row in connection.execute(
                sa.select(*ENTRY_COLUMNS, sa.func.min(runs.c.datetime_tz).label("first"))
                .where(runs.c.status.is_not(None), merged())
                .group_by(*ENTRY_COLUMNS)
            )
        }
    found = []
    for run in last_runs:
        key = (run["source_path"], run["source_layer"], run["layer_name"])
        success = successes.get(key)
        since = success["datetime_tz"] if success is not None else firsts.get(key)
        if since is None or since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC) if since is not None else None
        if since is None or since >= cutoff:
            continue
        if run_label(run) != "failure" and success is not None and run["id"] == success["id"]:
            continue
        found.append(
            {
                "source_path": key[0],
                "source_layer": key[1],
                "layer_name": key[2],
                "last_success": {"id": success["id"], "datetime": success["datetime_tz"]}
                if success
                else None,
                "since": since,
                "last_run": {
                    "id": run["id"],
                    "label": run_label(run),
                    "message": run["message"],
                    "source_problem": run["source_problem"],
                },
            }
        )
    return found


def source_broken(bind: Bind, paths: Iterable[str]) -> dict[str, bool]:
    """Per source path, whether it is broken: the newest merged recorded run of one of its layer entries failed (or
    was rejected, §10). A path without a merged run is not in the answer."""
    wanted = sorted(set(paths))
    states: dict[str, bool] = {}
    with transaction(bind) as connection:
        for start in range(0, len(wanted), 1000):
            rank = (
                sa.func.row_number()
                .over(partition_by=ENTRY_COLUMNS, order_by=(runs.c.datetime_tz.desc(), runs.c.id.desc()))
                .label("rank")
            )
            ranked = (
                sa.select(
                    runs.c.source_path,
                    runs.c.status,
                    runs.c.accepted,
                    runs.c.state,
                    runs.c.source_problem,
                    runs.c.warning,
                    rank,
                )
                .where(
                    runs.c.source_path.in_(wanted[start : start + 1000]), runs.c.status.is_not(None), merged()
                )
                .subquery()
            )
            for row in connection.execute(sa.select(ranked).where(ranked.c.rank == 1)):
                states[row.source_path] = (
                    states.get(row.source_path, False) or run_label(row_dict(row)) == "failure"
                )
    return states


# ----------------------------------------------------------------------------------------------------------------
# Subscriptions
# ----------------------------------------------------------------------------------------------------------------


def subscribe(bind: Bind, email: str, source_path: str, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The subscription of ``email`` to ``source_path``: the existing one (confirmed or not), else a new one,
    unconfirmed, with a fresh random unsubscribe token."""
    condition = sa.and_(subscriptions.c.email == email, subscriptions.c.source_path == source_path)
    with transaction(bind) as connection:
        row = connection.execute(sa.select(subscriptions).where(condition)).first()
        if row is None:
            try:
                with connection.begin_nested():
                    connection.execute(
                        sa.insert(subscriptions).values(
                            email=email,
                            source_path=source_path,
                            token=secrets.token_urlsafe(32),
                            datetime_created=now or utcnow(),
                        )
                    )
            except sa.exc.IntegrityError:
                pass  # the same address subscribed at the same moment: use that row
            row = connection.execute(sa.select(subscriptions).where(condition)).one()
    return row_dict(row)


def restart_confirmation(bind: Bind, subscription_id: int, *, now: dt.datetime) -> dict[str, Any]:
    """An unconfirmed subscription whose confirmation link expired, its time set to ``now`` for a new link."""
    with transaction(bind) as connection:
        connection.execute(
            sa.update(subscriptions)
            .where(subscriptions.c.id == subscription_id, subscriptions.c.datetime_confirmed.is_(None))
            .values(datetime_created=now)
        )
        row = connection.execute(sa.select(subscriptions).where(subscriptions.c.id == subscription_id)).one()
    return row_dict(row)


def get_subscription(bind: Bind, subscription_id: int) -> dict[str, Any] | None:
    """One subscription, or None."""
    with transaction(bind) as connection:
        row = connection.execute(
            sa.select(subscriptions).where(subscriptions.c.id == subscription_id)
        ).first()
    return row_dict(row) if row is not None else None


def subscription_by_token(bind: Bind, token: str) -> dict[str, Any] | None:
    """The subscription of an unsubscribe token, or None."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(subscriptions).where(subscriptions.c.token == token)).first()
    return row_dict(row) if row is not None else None


def confirm_subscription(
    bind: Bind, subscription_id: int, email: str, *, now: dt.datetime | None = None
) -> dict[str, Any] | None:
    """Confirm a subscription (its id and address must match; confirming twice keeps the first time) and set
    ``broken`` to the source's present state, so that its first message is a change. None when it is gone."""
    with transaction(bind) as connection:
        row = connection.execute(
            sa.select(subscriptions).where(
                subscriptions.c.id == subscription_id, subscriptions.c.email == email
            )
        ).first()
        if row is None:
            return None
        if row.datetime_confirmed is None:
            broken = source_broken(connection, [row.source_path]).get(row.source_path)
            connection.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.id == subscription_id)
                .values(datetime_confirmed=now or utcnow(), broken=broken)
            )
            row = connection.execute(
                sa.select(subscriptions).where(subscriptions.c.id == subscription_id)
            ).one()
    return row_dict(row)


def unsubscribe(bind: Bind, token: str) -> dict[str, Any] | None:
    """Delete the subscription of an unsubscribe token; return it, or None when there is none (any more)."""
    with transaction(bind) as connection:
        row = connection.execute(sa.select(subscriptions).where(subscriptions.c.token == token)).first()
        if row is None:
            return None
        connection.execute(sa.delete(subscriptions).where(subscriptions.c.id == row.id))
    return row_dict(row)


def confirmed_subscriptions(bind: Bind) -> list[dict[str, Any]]:
    """Every confirmed subscription, by path then id."""
    with transaction(bind) as connection:
        rows = connection.execute(
            sa.select(subscriptions)
            .where(subscriptions.c.datetime_confirmed.is_not(None))
            .order_by(subscriptions.c.source_path, subscriptions.c.id)
        ).all()
    return [row_dict(row) for row in rows]


def set_told(bind: Bind, subscription_id: int, broken: bool) -> None:
    """Record the source state a subscriber was told about."""
    with transaction(bind) as connection:
        connection.execute(
            sa.update(subscriptions).where(subscriptions.c.id == subscription_id).values(broken=broken)
        )
