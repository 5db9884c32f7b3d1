"""The review queue (machine-ci.md §9.2, §10): runs held by the quality gate, maintainers' decisions, API tokens.

A run is **held** when it succeeded (``status`` true), the gate stored a warning (``runs.warning``) and nobody has
decided yet (``accepted`` null). A decision sets ``accepted`` (true: the run feeds latest URLs, collections and the
health page from then on, :func:`openaddr.db.results.accepted`; false: it counts as failed) and is recorded in
``run_reviews`` with who decided — a GitHub login, or the name of the API token a script used — and when.

A decision covers one output: the run, and when it is a copy (``copy_of``) its original, and every other copy of
that original still held (a batch set may have reused a held run of a CI job or of an earlier set: they are the same
files, judged once). Each run changed gets its own ``run_reviews`` row naming the run the maintainer decided on.
A run already decided, or one that is not held, is refused (:class:`NotHeld`): decisions are never overwritten.

API tokens (``api_tokens``) are random (:func:`secrets.token_urlsafe`, 256 bits), shown once when created and kept
only as their SHA-256: a token of that entropy cannot be found from its hash, so a slow password hash would add
nothing but latency to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.results import previous_accepted_run
from openaddr.db.runs import transaction, utcnow
from openaddr.db.schema import REVIEWER_KINDS, api_tokens, row_dict, run_reviews, runs

if TYPE_CHECKING:
    import datetime as dt

    from openaddr.db.runs import Bind

log = logging.getLogger(__name__)

#: Prefix of every API token (recognisable in logs and secret scanners).
TOKEN_PREFIX = "oam_"
#: Names of API tokens: what ``run_reviews.reviewer`` records for a script's decisions.
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class NotHeld(ValueError):
    """The run is not held by the quality gate (no warning, not successful, or already decided)."""


def held() -> sa.ColumnElement[bool]:
    """Runs held by the quality gate: successful, with a warning, not decided."""
    return sa.and_(runs.c.status.is_(True), runs.c.warning.is_not(None), runs.c.accepted.is_(None))


def held_runs(bind: Bind) -> list[dict[str, Any]]:
    """Every held run, newest first, as its columns (without ``source_data``) plus ``previous``: the entry's
    previous accepted, merged, successful run (``id``, ``address_count``), or None."""
    columns = [column for column in runs.c if column.name != "source_data"]
    query = sa.select(*columns).where(held()).order_by(runs.c.datetime_tz.desc(), runs.c.id.desc())
    with transaction(bind) as connection:
        found = [row_dict(row) for row in connection.execute(query).all()]
        for run in found:
            run["previous"] = previous_accepted_run(
                connection,
                source_path=run["source_path"],
                source_layer=run["source_layer"],
                layer_name=run["layer_name"],
                exclude_run_id=run["id"],
            )
    return found


def decide(
    bind: Bind,
    run_id: int,
    *,
    accept: bool,
    reviewer: str,
    reviewer_kind: str,
    now: dt.datetime | None = None,
) -> list[int]:
    """Accept or reject a held run (and the other runs of the same output, see the module docstring); record who
    and when. Returns the ids of the runs decided, the given one first.

    :param reviewer: the GitHub login, or the API token's name
    :param reviewer_kind: ``github`` or ``token``
    :raises LookupError: no run has this id
    :raises NotHeld: the run is not held (the message says why: already accepted or rejected, no warning, …)
    """
    if reviewer_kind not in REVIEWER_KINDS:
        raise ValueError(f"reviewer kind must be one of {REVIEWER_KINDS}, not {reviewer_kind!r}")
    if not reviewer:
        raise ValueError("a decision needs a reviewer")
    now = now or utcnow()
    decision = "accepted" if accept else "rejected"
    with transaction(bind) as connection:
        # The guard is in the UPDATE itself: of two maintainers deciding at once, one changes the row.
        changed = connection.execute(
            sa.update(runs).where(runs.c.id == run_id, held()).values(accepted=accept)
        )
        if changed.rowcount != 1:
            raise _why_not_held(connection, run_id)
        original = (
            connection.execute(sa.select(runs.c.copy_of).where(runs.c.id == run_id)).scalar_one() or run_id
        )
        others = (
            connection.execute(
                sa.select(runs.c.id)
                .where(sa.or_(runs.c.id == original, runs.c.copy_of == original), runs.c.id != run_id, held())
                .order_by(runs.c.id)
            )
            .scalars()
            .all()
        )
        if others:
            connection.execute(sa.update(runs).where(runs.c.id.in_(others), held()).values(accepted=accept))
        decided = [run_id, *others]
        connection.execute(
            sa.insert(run_reviews),
            [
                {
                    "run_id": decided_id,
                    "decision": decision,
                    "reviewer": reviewer,
                    "reviewer_kind": reviewer_kind,
                    "decided_at": now,
                    "decided_run_id": run_id,
                }
                for decided_id in decided
            ],
        )
    log.info("Run %d %s by %s %s (runs %s)", run_id, decision, reviewer_kind, reviewer, decided)
    return decided


def _why_not_held(connection: sa.Connection, run_id: int) -> Exception:
    row = connection.execute(
        sa.select(runs.c.status, runs.c.warning, runs.c.accepted).where(runs.c.id == run_id)
    ).first()
    if row is None:
        return LookupError(f"Run {run_id} does not exist")
    if row.accepted is not None:
        last = latest_review(connection, run_id)
        who = f" by {last['reviewer']} at {last['decided_at']:%Y-%m-%d %H:%M} UTC" if last else ""
        return NotHeld(f"Run {run_id} was already {'accepted' if row.accepted else 'rejected'}{who}")
    if not row.status:
        return NotHeld(f"Run {run_id} did not succeed: there is nothing to accept or reject")
    return NotHeld(f"Run {run_id} has no quality-gate warning: it is not held")


def latest_review(bind: Bind, run_id: int) -> dict[str, Any] | None:
    """The newest decision recorded on a run (``decision``, ``reviewer``, ``reviewer_kind``, ``decided_at``,
    ``decided_run_id``), or None."""
    query = (
        sa.select(run_reviews)
        .where(run_reviews.c.run_id == run_id)
        .order_by(run_reviews.c.decided_at.desc(), run_reviews.c.id.desc())
        .limit(1)
    )
    with transaction(bind) as connection:
        row = connection.execute(query).first()
    return row_dict(row) if row is not None else None


# --------------------------------------------------------------------------------------------------------------
# API tokens
# --------------------------------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """The hex SHA-256 that ``api_tokens`` keeps of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(bind: Bind, name: str, *, now: dt.datetime | None = None) -> str:
    """Make a new API token called ``name`` and return it (the only time it is seen: only its hash is stored).

    :raises ValueError: the name is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``, or a token of that name exists
    """
    if not TOKEN_NAME.fullmatch(name):
        raise ValueError(f"token name {name!r} must match {TOKEN_NAME.pattern}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction(bind) as connection:
        if (
            connection.execute(sa.select(api_tokens.c.id).where(api_tokens.c.name == name)).first()
            is not None
        ):
            raise ValueError(f"an API token named {name!r} exists (revoked ones keep their name)")
        connection.execute(
            sa.insert(api_tokens).values(
                name=name, token_sha256=token_hash(token), created_at=now or utcnow()
            )
        )
    log.info("API token %r created", name)
    return token


def revoke_token(bind: Bind, name: str, *, now: dt.datetime | None = None) -> None:
    """Revoke the API token called ``name``.

    :raises LookupError: no live token has that name
    """
    with transaction(bind) as connection:
        changed = connection.execute(
            sa.update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now or utcnow())
        )
        if changed.rowcount != 1:
            raise LookupError(f"no live API token is named {name!r}")
    log.info("API token %r revoked", name)


def token_name(bind: Bind, token: str, *, now: dt.datetime | None = None) -> str | None:
    """The name of the live API token ``token``, noting its use; None when it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = token_hash(token)
    with transaction(bind) as connection:
        row = connection.execute(
            sa.select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.token_sha256).where(
                api_tokens.c.token_sha256 == digest, api_tokens.c.revoked_at.is_(None)
            )
        ).first()
        if row is None or not hmac.compare_digest(row.token_sha256, digest):
            return None
        connection.execute(
            sa.update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now or utcnow())
        )
    return str(row.name)
