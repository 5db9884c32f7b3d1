"""The results site's per-source, latest, health and sample routes (machine-ci.md §9.1, §9.2).

* ``GET /sources/<source>`` and ``/sources/<source>.json`` (``<source>``: the path below ``sources/`` without
  ``.json``, as in ``state.txt``): per layer entry, the timeline of every recorded run of the file, newest first —
  date, status (success, warning, failure, skipped), address count, change in % against the entry's previous run
  (:func:`openaddr.db.results.source_timeline`), problem, links. Runs of pull requests' jobs (not merged) are listed
  and marked *unmerged*, but never count as previous or latest. Also the latest run per entry and the source JSON.
  404 when the path has no recorded run.
* ``GET /latest/run/<source>.zip``: 302 to the processed zip of the latest run (merged, accepted, successful) of the
  file's first address entry that has one; ``/latest/run/<source>/<layer>/<name>.zip`` and ``….geojson.gz``: 302 to
  that entry's zip or GeoJSON. 404 "No latest run found". A path whose second-last part is a layer type
  (``addresses``, ``parcels``, …) is read as ``<source>/<layer>/<name>``. They are ``max-age=60`` without
  ``Last-Modified``, so they follow a newly recorded run within a minute.
* ``GET /health``: ``OK``. ``GET /health/sources`` and ``.json`` (``?failing=true``: only stale and never): per entry
  healthy, stale or never (:func:`openaddr.db.results.entry_health`), with counts per class, and whether alerts
  are on or off (:func:`openaddr.alerts.alerting_status`, from the newest recorded alert).
* ``GET /runs/<id>/sample.html`` and ``sample.json``: the run's published ``sample.json`` (of the run a copy reuses),
  transposed in HTML (one line per column), as rows in JSON; 404 "Run <id> does not exist" or "Run <id> did not
  produce sample data", 500 when it does not parse.
* ``GET /robots.txt``; ``GET /headers`` (the request headers as JSON) only when ``DEBUG_HEADERS`` is set, else 404.

Everything from the database reaches pages through Jinja's autoescaping; only http(s) URLs become links.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for

from openaddr.alerts import alerting_status
from openaddr.db.alerts import latest_alert
from openaddr.db.results import (
    HEALTH_CLASSES,
    entry_health,
    latest_entry_runs,
    source_document,
    source_timeline,
)
from openaddr.db.runs import get_run
from openaddr.sources import LAYER_TYPES
from openaddr.storage import ObjectNotFoundError, run_prefix
from webhook.db import get_engine
from webhook.responses import conditional
from webhook.storage import get_storage
from webhook.subscriptions import subscribe_status

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Mapping

bp = Blueprint("sources", __name__)

#: ``Cache-Control: max-age`` of the latest redirects, seconds.
LATEST_MAX_AGE = 60
#: State keys that link to published files, and their labels.
FILE_LINKS = (("processed", "data"), ("sample", "sample.json"), ("output", "output"), ("preview", "preview"))
#: Classes of ``site.css`` per run label.
LABEL_CLASSES = {
    "success": "ok",
    "skipped": "muted",
    "warning": "warn",
    "failure": "fail",
    "pending": "muted",
}
ROBOTS = """User-agent: *
Allow: /
Allow: /sources/
Disallow: /runs/
Disallow: /jobs/
Disallow: /sets/
Disallow: /latest/
"""


def text(body: str, status: int = 200) -> Response:
    """A plain-text answer."""
    return Response(body, status=status, mimetype="text/plain")


def source_path(source: str) -> str:
    """``sources/<source>.json``."""
    return f"sources/{source}.json"


def source_name(path: str | None) -> str:
    """The part of ``sources/<source>.json`` the site names a source by."""
    path = path or ""
    path = path.removeprefix("sources/")
    return path.removesuffix(".json")


def http_url(value: Any) -> str | None:
    """``value`` when it is an http(s) URL (a link's target), else None: a state never makes a ``javascript:`` link."""
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    return None


def airflow_task_url(run: Mapping[str, Any]) -> str | None:
    """The run's task instance in Airflow's UI (its logs), when ``AIRFLOW_UI_URL`` is set and the run has one.

    Airflow 3.3's UI routes: ``/dags/<dag>/runs/<dag run>/tasks/<task>`` and, for a mapped task instance,
    ``…/mapped/<map index>``.
    """
    base = current_app.config.get("AIRFLOW_UI_URL")
    dag_id, dag_run_id, task_id = (
        run.get("airflow_dag_id"),
        run.get("airflow_dag_run_id"),
        run.get("airflow_task_id"),
    )
    if not base or not dag_id or not dag_run_id or not task_id:
        return None
    dag, dag_run, task = (quote(str(part), safe="") for part in (dag_id, dag_run_id, task_id))
    url = f"{str(base).rstrip('/')}/dags/{dag}/runs/{dag_run}/tasks/{task}"
    map_index = run.get("airflow_map_index")
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{int(map_index)}"
    return url


def has_sample(run: Mapping[str, Any]) -> bool:
    """Whether the run's state names a sample."""
    state = run.get("state")
    return isinstance(state, dict) and bool(state.get("sample"))


def run_links(run: Mapping[str, Any], *, external: bool = False) -> dict[str, str]:
    """A run's links: its page, its sample page, its published files (http(s) only) and its Airflow log."""
    run_id = run["id"]
    links = {"run": url_for("site.run_page", run_id=run_id, _external=external)}
    state = run.get("state") if isinstance(run.get("state"), dict) else {}
    if has_sample(run):
        links["sample"] = url_for("sources.sample_html", run_id=run_id, _external=external)
    for key, label in FILE_LINKS:
        url = http_url(state.get(key))
        if url is None:
            continue
        if key == "processed":
            label = "zip" if url.endswith(".zip") else "geojson"
        links[label] = url
    log = airflow_task_url(run)
    if log:
        links["log"] = log
    return links


def preview_note(run: Mapping[str, Any]) -> str:
    """Why a run shows no preview image (pages show this text instead of a broken image)."""
    state = run.get("state") if isinstance(run.get("state"), dict) else {}
    stats = run.get("stats")
    if run.get("status") is None:
        return "No preview yet: the run is pending."
    if run.get("status") is False:
        return "No preview: the run failed."
    if state.get("skipped"):
        return "No preview: the source says to skip."
    if isinstance(stats, dict) and stats.get("bounds") is None:
        return "No preview: no row has valid coordinates."
    return "No preview was drawn for this run (see its log)."


def run_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """What a page shows of a run: its columns plus ``links`` (``preview``: the published image), ``css``, the
    formatted ``date`` and ``change``, and ``preview_note`` when it has no preview."""
    when: dt.datetime | None = run.get("datetime_tz")
    change = run.get("change")
    links = run_links(run)
    return {
        **run,
        "links": links,
        "preview_note": None if "preview" in links else preview_note(run),
        "css": LABEL_CLASSES.get(run.get("label") or "", ""),
        "date": when.strftime("%Y-%m-%d %H:%M UTC") if when else "",
        "day": when.strftime("%Y-%m-%d") if when else "",
        "time": when.strftime("%H:%M UTC") if when else "",
        "iso": when.isoformat() if when else "",
        "change_text": "" if change is None else f"{change:+.1f} %",
        "change_css": "fail" if change is not None and change < -10 else "",
    }


def run_json(run: Mapping[str, Any]) -> dict[str, Any]:
    """A timeline run as JSON."""
    when = run.get("datetime_tz")
    return {
        "id": run["id"],
        "date": when.isoformat() if when else None,
        "status": run.get("label"),
        "merged": run.get("merged"),
        "accepted": run.get("accepted"),
        "job_id": run.get("job_id"),
        "set_id": run.get("set_id"),
        "commit_sha": run.get("commit_sha"),
        "address_count": run.get("address_count"),
        "change_percent": None if run.get("change") is None else round(run["change"], 2),
        "previous_id": run.get("previous_id"),
        "source_problem": run.get("source_problem"),
        "warning": run.get("warning"),
        "message": run.get("message"),
        "copy_of": run.get("copy_of"),
        "links": run_links(run, external=True),
    }


def pretty_source(document: bytes) -> str:
    """The source file, indented when it parses as JSON, else as it is."""
    try:
        return json.dumps(json.loads(document), indent=2, ensure_ascii=False)
    except ValueError:
        return document.decode("utf-8", errors="replace")


@bp.get("/sources/<path:source>")
def source_page(source: str) -> Response | str:
    """A source's timeline per layer entry, as HTML or (``….json``) JSON; 404 when it has no recorded run."""
    as_json = source.endswith(".json")
    source = source.removesuffix(".json")
    engine = get_engine()
    entries = source_timeline(engine, source_path(source))
    if not entries:
        return text(f"Source {source} has no runs", 404)
    document = source_document(engine, source_path(source))
    # The stable latest URL only where it redirects: an entry whose latest successful run has a zip (not a failed
    # or skipped one: /latest/run/… would be a 404).
    zipped = {
        (run["source_layer"], run["layer_name"])
        for run in latest_entry_runs(engine, source_path(source))
        if processed_url(run, "zip")
    }
    newest = max(run["datetime_tz"] for entry in entries for run in entry["runs"] if run["datetime_tz"])
    if as_json:
        body: dict[str, Any] = {
            "source": source,
            "source_path": source_path(source),
            "entries": [
                {
                    "source_layer": entry["source_layer"],
                    "layer_name": entry["layer_name"],
                    "latest": run_json(entry["latest"]) if entry["latest"] else None,
                    "latest_zip_url": latest_entry_url(source, entry, "zip")
                    if (entry["source_layer"], entry["layer_name"]) in zipped
                    else None,
                    "runs": [run_json(run) for run in entry["runs"]],
                }
                for entry in entries
            ],
            "source_data_run": document[0] if document else None,
            "source_data": source_json(document[1]) if document else None,
        }
        return conditional(jsonify(body), newest)
    page = render_template(
        "source.html",
        source=source,
        entries=[
            {
                **entry,
                "latest": run_view(entry["latest"]) if entry["latest"] else None,
                "latest_zip": latest_entry_url(source, entry, "zip", external=False)
                if (entry["source_layer"], entry["layer_name"]) in zipped
                else None,
                "runs": [run_view(run) for run in entry["runs"]],
            }
            for entry in entries
        ],
        document_run=document[0] if document else None,
        document=pretty_source(document[1]) if document else None,
        subscribe=subscribe_status(),
    )
    return conditional(Response(page, mimetype="text/html"), newest)


def source_json(document: bytes) -> Any:
    """The source file as JSON, or its text when it does not parse."""
    try:
        return json.loads(document)
    except ValueError:
        return document.decode("utf-8", errors="replace")


def latest_entry_url(
    source: str, entry: Mapping[str, Any], extension: str, *, external: bool = True
) -> str | None:
    """The stable latest URL of a layer entry (None for an entry without a layer or name)."""
    if not entry.get("source_layer") or not entry.get("layer_name"):
        return None
    rest = f"{source}/{entry['source_layer']}/{entry['layer_name']}.{extension}"
    return url_for("sources.latest_run", rest=rest, _external=external)


# ----------------------------------------------------------------------------------------------------------------
# Latest
# ----------------------------------------------------------------------------------------------------------------


def processed_url(run: Mapping[str, Any], extension: str) -> str | None:
    """The public URL of a run's processed zip (``zip``) or GeoJSON (``geojson.gz``), or None.

    The zip is the state's ``processed`` when it is one. An address layer's ``processed`` is its zip, and its GeoJSON
    ``out.geojson.gz`` beside it in the folder of the run whose state it is (a copy's original), when published.
    """
    state = run.get("state")
    if not isinstance(state, dict):
        return None
    processed = http_url(state.get("processed"))
    if processed is None:
        return None
    if processed.endswith(f".{extension}"):
        return processed
    if extension != "geojson.gz":
        return None
    storage = get_storage()
    key = f"{run_prefix(state.get('run id') or run.get('copy_of') or run['id'])}/out.geojson.gz"
    return storage.url(key) if storage.exists(key) else None


def redirect_latest(url: str | None) -> Response:
    """302 to ``url`` (``max-age`` 60, no ``Last-Modified``), or 404 "No latest run found"."""
    if url is None:
        return text("No latest run found", 404)
    response = redirect(url, code=302)
    response.cache_control.public = True
    response.cache_control.max_age = LATEST_MAX_AGE
    return response


@bp.get("/latest/run/<path:rest>")
def latest_run(rest: str) -> Response:
    """302 to the latest processed data of a source (``<source>.zip``) or a layer entry."""
    for extension in ("geojson.gz", "zip"):
        if rest.endswith(f".{extension}"):
            stem = rest.removesuffix(f".{extension}")
            break
    else:
        return text("No latest run found", 404)
    parts = stem.split("/")
    if len(parts) >= 3 and parts[-2] in LAYER_TYPES:
        source, layer, name = "/".join(parts[:-2]), parts[-2], parts[-1]
        runs = [
            run
            for run in latest_entry_runs(get_engine(), source_path(source))
            if run["source_layer"] == layer and run["layer_name"] == name
        ]
        return redirect_latest(processed_url(runs[0], extension) if runs else None)
    if extension != "zip":
        return text("No latest run found", 404)
    for run in latest_entry_runs(get_engine(), source_path(stem)):
        if run["source_layer"] != "addresses":
            break
        url = processed_url(run, "zip")
        if url:
            return redirect_latest(url)
    return redirect_latest(None)


# ----------------------------------------------------------------------------------------------------------------
# Health
# ----------------------------------------------------------------------------------------------------------------


@bp.get("/health")
def health() -> Response:
    """``OK``, for load balancers."""
    return text("OK")


@bp.get("/health/sources.json")
def health_sources_json() -> Response | str:
    """:func:`health_sources` as JSON."""
    return health_sources(as_json=True)


@bp.get("/health/sources")
def health_sources(*, as_json: bool = False) -> Response | str:
    """Every layer entry's health, with counts per class; ``?failing=true``: only stale and never entries.

    No ``Last-Modified``: an entry turns stale with time alone.
    """
    failing = request.args.get("failing", "").strip().lower() in ("1", "true", "yes", "on")
    items = entry_health(get_engine())
    alerting = alerting_status(latest_alert(get_engine()))
    counts = {name: sum(1 for item in items if item["health"] == name) for name in HEALTH_CLASSES}
    if failing:
        items = [item for item in items if item["health"] != "healthy"]
    if as_json:
        return jsonify(
            {
                "counts": counts,
                "failing_only": failing,
                "alerts": alerting,
                "entries": [
                    {
                        "source": source_name(item["source_path"]),
                        "source_layer": item["source_layer"],
                        "layer_name": item["layer_name"],
                        "health": item["health"],
                        "last_status": item["last_run"]["label"],
                        "last_run_id": item["last_run"]["id"],
                        "last_run_date": iso(item["last_run"].get("datetime_tz")),
                        "last_success_id": item["last_success"]["id"] if item["last_success"] else None,
                        "last_success_date": iso(item["last_success"]["datetime_tz"])
                        if item["last_success"]
                        else None,
                    }
                    for item in items
                ],
            }
        )
    return render_template(
        "health.html",
        counts=counts,
        alerting=alerting,
        failing=failing,
        items=[
            {
                **item,
                "source": source_name(item["source_path"]),
                "last_run": run_view(item["last_run"]),
                "last_success": run_view(item["last_success"]) if item["last_success"] else None,
            }
            for item in items
        ],
    )


def iso(when: dt.datetime | None) -> str | None:
    """A time in ISO 8601, or None."""
    return when.isoformat() if when else None


# ----------------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------------


def read_sample(run_id: int) -> tuple[list[list[Any]], dt.datetime | None] | Response:
    """A run's sample rows (row 0 the column names) and the run's time, or the plain-text error answer."""
    run = get_run(get_engine(), run_id)
    if run is None:
        return text(f"Run {run_id} does not exist", 404)
    if not has_sample(run):
        return text(f"Run {run_id} did not produce sample data", 404)
    state = run["state"]
    key = f"{run_prefix(state.get('run id') or run.get('copy_of') or run_id)}/sample.json"
    try:
        data = get_storage().get_bytes(key)
    except ObjectNotFoundError:
        return text(f"Run {run_id} did not produce sample data", 404)
    try:
        rows = json.loads(data)
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, list) for row in rows):
        current_app.logger.error("Sample %s of run %d does not parse", key, run_id)
        return text(f"Run {run_id} sample data does not parse", 500)
    return rows, run.get("datetime_tz")


@bp.get("/runs/<int:run_id>/sample.json")
def sample_json(run_id: int) -> Response:
    """The run's sample rows as JSON (what ``site.js`` shows)."""
    result = read_sample(run_id)
    if isinstance(result, Response):
        return result
    rows, when = result
    return conditional(jsonify(rows), when)


@bp.get("/runs/<int:run_id>/sample.html")
def sample_html(run_id: int) -> Response:
    """The run's sample, transposed: one line per column, its values across."""
    result = read_sample(run_id)
    if isinstance(result, Response):
        return result
    rows, when = result
    header, records = rows[0], rows[1:]
    columns = [
        {"name": name, "values": [record[index] if index < len(record) else "" for record in records]}
        for index, name in enumerate(header)
    ]
    page = render_template("sample.html", run_id=run_id, columns=columns)
    return conditional(Response(page, mimetype="text/html"), when)


# ----------------------------------------------------------------------------------------------------------------
# Robots, headers
# ----------------------------------------------------------------------------------------------------------------


@bp.get("/robots.txt")
def robots() -> Response:
    """Crawlers may read the home page and the sources, not runs, jobs, sets or the latest redirects."""
    return text(ROBOTS)


@bp.get("/headers")
def headers() -> Response:
    """The request's headers as JSON, only with ``DEBUG_HEADERS`` (else 404): what a proxy in front passes on."""
    if not current_app.config.get("DEBUG_HEADERS"):
        return text("Not found", 404)
    return jsonify(dict(request.headers.items()))
