"""The first pages of the results site (machine-ci.md §9): a run's page, and in embedded mode the run files.

* ``GET /runs/<id>/``: the run's row of the Machine database (machine-ci.md §9.2): status (success, warning, failure,
  skipped), message, problems, counts, its job or set, whether it is merged and accepted, the warning of the quality
  gate, its stats (``runs.stats``), its state, links to its data (zip or GeoJSON, sample, output, preview), the
  Airflow task instance (its log, with ``AIRFLOW_UI_URL``), its sample toggle and the files served here.
* ``GET /runs/<id>/preview.png``: 302 to the run's published ``preview.png``; 404 with the reason when it has none.
* ``GET /files/<path>``: the storage folder over http, only when the app has a ``FILES_FOLDER`` (the embedded mode
  of ``make run`` sets it to ``$OPENADDR_HOME/storage``), so that the Airflow UI's "Run outputs" link opens.
  :func:`flask.send_from_directory` refuses every path outside the folder (``..``, absolute paths) with 404.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    send_from_directory,
)

from openaddr.db.results import run_label
from openaddr.db.review import latest_review
from openaddr.db.runs import get_run
from openaddr.skeleton import STATE_KEY, is_record, skeleton_text
from openaddr.storage import run_prefix
from webhook.db import get_engine
from webhook.responses import conditional

if TYPE_CHECKING:
    from flask import Response

bp = Blueprint("site", __name__)


def files_folder() -> Path | None:
    """The storage folder served under ``/files/``, or None when this app serves no files."""
    folder = current_app.config.get("FILES_FOLDER")
    return Path(folder) if folder else None


@bp.get("/files/<path:path>")
def files(path: str) -> Response:
    """A published file of the local storage (404 outside it, or when no folder is served)."""
    folder = files_folder()
    if folder is None:
        abort(404)
    return send_from_directory(folder, path)


def run_files(run_id: int) -> list[dict[str, Any]]:
    """The files published under ``runs/<id>/`` with their ``/files/`` path and size, when files are served."""
    folder = files_folder()
    if folder is None:
        return []
    prefix = run_prefix(run_id)
    run_folder = folder / prefix
    if not run_folder.is_dir():
        return []
    return [
        {
            "name": path.relative_to(run_folder).as_posix(),
            "key": f"{prefix}/{path.relative_to(run_folder).as_posix()}",
            "size": path.stat().st_size,
        }
        for path in sorted(run_folder.rglob("*"))
        if path.is_file()
    ]


@bp.get("/runs/<int:run_id>/preview.png")
def run_preview(run_id: int) -> Response:
    """302 to the run's published preview image (a stable site URL for the PR comment), or 404 saying why there
    is none."""
    from webhook.sources import http_url, preview_note, text

    run = get_run(get_engine(), run_id)
    if run is None:
        return text(f"Run {run_id} does not exist", 404)
    url = http_url((run.get("state") or {}).get("preview"))
    if url is None:
        return text(preview_note(run), 404)
    return redirect(url, code=302)


def skeleton_view(record: Any) -> dict[str, Any] | None:
    """What the run page shows of a suggested conform (a record of :mod:`openaddr.skeleton`), or None.

    The record was written from hostile field names: the template escapes every text, and the lists are cut."""
    if not is_record(record):
        return None

    def texts(value: Any, limit: int = 60) -> list[str]:
        return [str(v)[:300] for v in value[:limit]] if isinstance(value, list) else []

    count = record.get("field_count")
    fields = texts(record.get("fields"))
    return {
        "text": skeleton_text(record["conform"]),
        "valid": not record.get("issues"),
        "issues": texts(record.get("issues"), 20),
        "missing": texts(record.get("missing"), 20),
        "hints": texts(record.get("hints"), 20),
        "fields": fields,
        "field_count": count if isinstance(count, int) and count >= 0 else len(fields),
    }


@bp.get("/runs/<int:run_id>/")
def run_page(run_id: int) -> Response:
    """A run's state from the Machine database, with links to its published files."""
    from webhook.sources import run_view, source_name

    run = get_run(get_engine(), run_id)
    if run is None:
        abort(404)
    run.pop("source_data", None)
    state = run.get("state") or {}
    stats = run.get("stats")
    review = latest_review(get_engine(), run_id)
    page = render_template(
        "run.html",
        run=run_view({**run, "label": run_label(run)}),
        source=source_name(run.get("source_path")),
        state=state,
        stats=json.dumps(stats, indent=2, ensure_ascii=False, default=str) if stats is not None else None,
        files=run_files(run_id),
        skeleton=skeleton_view(state.get(STATE_KEY)),
        skeleton_key=STATE_KEY,
        review=review,
    )
    # A decision changes the page: the newer of the run's time and the decision's is its Last-Modified.
    changed = max(filter(None, (run.get("datetime_tz"), (review or {}).get("decided_at"))), default=None)
    return conditional(make_response(page), changed)
