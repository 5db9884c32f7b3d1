"""The review queue (machine-ci.md §9.2, §10): the runs held by the quality gate, and the maintainers' decisions.

* ``GET /review/``: every held run (successful, with a warning, not decided), newest first, with its warning, its
  count and the previous accepted run's count with the change, its preview thumbnail and links, and — for a
  signed-in maintainer — an *Accept* and a *Reject* form (CSRF-protected); then the latest decisions (who, how,
  when). Anyone may read it (the warnings are on the public run pages too); ``Cache-Control: no-store`` (it depends
  on the session).
* ``GET /review/held.json``: the same list for scripts.
* ``POST /runs/<id>/accept`` and ``POST /runs/<id>/reject``: a signed-in member of ``MAINTAINERS_ORG`` (form with
  its CSRF token; 303 back to the queue) or a script (``Authorization: Bearer <API token>``; JSON answer). 404 for
  an unknown run, 409 for a run that is not held (already decided, no warning, failed): decisions are never
  overwritten. :func:`openaddr.db.review.decide` records the decision and who made it.

An accepted run feeds the latest URLs, ``state.txt``, the collections and the health page from then on (it is the
newest accepted, merged run of its entry); a rejected one counts as failed and never does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    flash,
    get_flashed_messages,
    jsonify,
    make_response,
    redirect,
    render_template,
    url_for,
)

from openaddr.db.results import run_label
from openaddr.db.review import NotHeld, decide, held_runs
from openaddr.db.schema import row_dict, run_reviews, runs
from webhook.auth import reviewer, sign_in_configured, signed_in_login
from webhook.db import get_engine

if TYPE_CHECKING:
    from flask import Response

bp = Blueprint("review", __name__)

#: Decisions listed under the queue.
RECENT_DECISIONS = 20


def held_view(run: dict[str, Any]) -> dict[str, Any]:
    """A held run as the queue shows it: :func:`webhook.sources.run_view` plus the previous count and the change."""
    from webhook.sources import run_view, source_name

    previous = run.get("previous")
    count, before = run.get("address_count"), (previous or {}).get("address_count")
    change = (count - before) * 100 / before if isinstance(count, int) and before else None
    return {
        **run_view({**run, "label": run_label(run), "change": change}),
        "source": source_name(run.get("source_path")),
        "previous_id": (previous or {}).get("id"),
        "previous_count": before,
    }


def recent_decisions(limit: int = RECENT_DECISIONS) -> list[dict[str, Any]]:
    """The latest decisions as the maintainer made them (one row per decision, not per run it covered)."""
    query = (
        sa.select(run_reviews, runs.c.source_path, runs.c.source_layer, runs.c.layer_name, runs.c.warning)
        .join(runs, runs.c.id == run_reviews.c.run_id)
        .where(run_reviews.c.run_id == run_reviews.c.decided_run_id)
        .order_by(run_reviews.c.decided_at.desc(), run_reviews.c.id.desc())
        .limit(limit)
    )
    with get_engine().connect() as connection:
        return [row_dict(row) for row in connection.execute(query).all()]


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/review/")
def queue() -> Response:
    """The held runs and, for a signed-in maintainer, their forms."""
    held = [held_view(run) for run in held_runs(get_engine())]
    page = render_template(
        "review.html",
        held=held,
        decisions=recent_decisions(),
        login=signed_in_login(),
        sign_in=sign_in_configured(),
        messages=get_flashed_messages(with_categories=True),
    )
    return _no_store(make_response(page))


@bp.get("/review/held.json")
def held_json() -> Response:
    """The held runs as JSON: id, source path, layer, name, warning, count, previous run and count, links."""
    from webhook.sources import run_links

    items = [
        {
            "id": run["id"],
            "source_path": run["source_path"],
            "source_layer": run["source_layer"],
            "layer_name": run["layer_name"],
            "warning": run["warning"],
            "address_count": run["address_count"],
            "previous_id": (run["previous"] or {}).get("id"),
            "previous_count": (run["previous"] or {}).get("address_count"),
            "merged": run["is_merged"],
            "copy_of": run["copy_of"],
            "links": run_links(run, external=True),
        }
        for run in held_runs(get_engine())
    ]
    return _no_store(jsonify({"held": items}))


def _decide(run_id: int, *, accept: bool) -> Response:
    name, kind = reviewer()
    as_json = kind == "token"
    try:
        decided = decide(get_engine(), run_id, accept=accept, reviewer=name, reviewer_kind=kind)
    except LookupError as error:
        return _answer(as_json, str(error), 404)
    except NotHeld as error:
        return _answer(as_json, str(error), 409)
    decision = "accepted" if accept else "rejected"
    if as_json:
        return _no_store(
            jsonify(
                {
                    "run": run_id,
                    "decision": decision,
                    "reviewer": name,
                    "reviewer_kind": kind,
                    "runs": decided,
                }
            )
        )
    also = (
        f" (with run{'s' if len(decided) > 2 else ''} {', '.join(map(str, decided[1:]))})"
        if decided[1:]
        else ""
    )
    flash(f"Run {run_id} {decision}{also}", "ok" if accept else "fail")
    return redirect(url_for("review.queue"), code=303)


def _answer(as_json: bool, message: str, status: int) -> Response:
    if as_json:
        response = jsonify({"error": message})
        response.status_code = status
        return _no_store(response)
    from webhook.sources import text

    return _no_store(text(message, status))


@bp.post("/runs/<int:run_id>/accept")
def accept(run_id: int) -> Response:
    """Release a held run: it feeds latest URLs, collections and health from now on."""
    return _decide(run_id, accept=True)


@bp.post("/runs/<int:run_id>/reject")
def reject(run_id: int) -> Response:
    """Discard a held run: it counts as failed."""
    return _decide(run_id, accept=False)
