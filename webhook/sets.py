"""The results site's index, sets and jobs (machine-ci.md §9.1), server-rendered; queries in
:mod:`openaddr.db.listing` and :mod:`openaddr.db.results`.

* ``GET /``: the latest completed set of ``SITE_OWNER``/``SITE_REPOSITORY``, the runs to date (latest merged,
  accepted run per layer entry; 20, successes first, unless ``?runs=all``), their totals, the current collection zips.
* ``GET /sets/`` (``?past=&n=``), ``GET /sets/<id>/``, ``GET /sets/<id>.json``, ``GET /sets/<id>/state.txt``,
  ``GET /latest/set`` (302 to the newest completed set).
* ``GET /state.txt``, ``GET /index.json``, ``GET /latest/licenses.json``.
* ``GET /jobs/`` (``?past=&n=``, ``past`` a job's sequence number) and ``GET /jobs/<id>``.

A set id that is not a positive integer is 400, an unknown one 404. Every route that knows the newest time of what it
shows sets ``Last-Modified`` and answers ``If-Modified-Since`` (:func:`webhook.responses.conditional`).
"""

from __future__ import annotations

import csv
import io
import re
from typing import TYPE_CHECKING, Any

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for

from openaddr.db import listing
from openaddr.db.jobs import get_job, get_set, latest_completed_set
from openaddr.db.results import latest_runs
from openaddr.db.runs import job_runs
from webhook.db import get_db
from webhook.responses import conditional, page_args

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable, Mapping

    from flask import Response
    from werkzeug.wrappers import Response as BaseResponse

bp = Blueprint("sets", __name__)

#: Runs shown on the index page unless ``?runs=all`` (7.5.5).
INDEX_RUNS = 20
#: ``index.json``'s licence phrase per licence class.
LICENSE_PHRASES = {"": "Freely Shareable", "sa": "Share-Alike Required"}
#: The largest id or sequence the tables hold (``INTEGER``); larger numbers in a URL name nothing.
MAX_ID = 2**31 - 1
#: A commit sha at the end of a GitHub statuses URL.
_STATUS_SHA = re.compile(r"/statuses/([0-9a-fA-F]{7,40})/?$")


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def base_url() -> str:
    """The site's public URL without a trailing slash: ``BASE_URL``, else the request's."""
    return str(current_app.config.get("BASE_URL") or request.url_root).rstrip("/")


def site_repository() -> tuple[str, str]:
    """``(SITE_OWNER, SITE_REPOSITORY)``: the repository whose sets the index page shows."""
    return str(current_app.config["SITE_OWNER"]), str(current_app.config["SITE_REPOSITORY"])


def set_id_arg(text: str) -> int:
    """A set id from the URL; 400 when it is not a positive integer, 404 when it is too large to be one."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        abort(400, description=f"Bad set id {text!r}")
    if int(text) > MAX_ID:
        abort(404, description=f"Set {text} not found")
    return int(text)


def page_before() -> tuple[int | None, int]:
    """:func:`~webhook.responses.page_args`, ``past`` capped at what the tables hold (SQLite cannot bind
    integers past 64 bits)."""
    past, size = page_args()
    return (min(past, MAX_ID + 1) if past is not None else None), size


def github_blob_url(
    owner: str | None, repository: str | None, sha: str | None, path: str | None
) -> str | None:
    """The source file on GitHub at its commit, or None when something is unknown."""
    if not (owner and repository and sha and path):
        return None
    return f"https://github.com/{owner}/{repository}/blob/{sha}/{path}"


def table_runs(
    run_list: Iterable[Mapping[str, Any]], *, owner: str | None, repository: str | None
) -> list[dict[str, Any]]:
    """Runs with what a runs table shows: ``name``, ``github_url``, ``state``, ``problems``, ``has_sample``."""
    rows = []
    for run in run_list:
        state = listing.run_state(run)
        rows.append(
            {
                **run,
                "name": listing.source_name(run.get("source_path")),
                "github_url": github_blob_url(
                    owner, repository, run.get("commit_sha"), run.get("source_path")
                ),
                "state": state,
                "problems": listing.run_problems(run),
                "has_sample": bool(state.get("sample")),
            }
        )
    return rows


def problems_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs with problems first, then by path, layer and name."""
    return sorted(
        rows,
        key=lambda row: (
            not row["problems"],
            row["source_path"] or "",
            row["source_layer"] or "",
            row["layer_name"] or "",
        ),
    )


def successes_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successful runs first (7.5.5's index page), then by path, layer and name."""
    return sorted(
        rows,
        key=lambda row: (
            row["status"] is not True,
            row["source_path"] or "",
            row["source_layer"] or "",
            row["layer_name"] or "",
        ),
    )


def run_times(run_list: Iterable[Mapping[str, Any]]) -> dt.datetime | None:
    """The newest ``datetime_tz`` of some runs."""
    return listing.newest(*(run.get("datetime_tz") for run in run_list))


def set_times(set_row: Mapping[str, Any] | None) -> dt.datetime | None:
    """When a set last changed (its end, else its start)."""
    if set_row is None:
        return None
    return listing.newest(set_row.get("datetime_start"), set_row.get("datetime_end"))


def state_text(rows: list[list[str]]) -> str:
    """``state.txt``: a header and the rows, tab-separated with CRLF line ends as 7.5.5 wrote it (csv's
    ``excel-tab``: a value holding a tab, a quote or a line break is quoted)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, dialect="excel-tab")
    writer.writerow(listing.STATE_TXT_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def text_response(text: str) -> Response:
    """A ``text/plain; charset=utf-8`` answer."""
    return current_app.response_class(text, mimetype="text/plain")


def human_size(size: Any) -> str:
    """A byte count as people read it: ``512 B``, ``1.5 KiB``, ``23.4 MiB``, ``1.2 GiB``."""
    value = float(size or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@bp.app_template_filter("human_size")
def human_size_filter(size: Any) -> str:
    """Jinja filter :func:`human_size`."""
    return human_size(size)


def link_url(value: Any) -> str | None:
    """A URL from the database that may be a link: http(s), or a path of this site; None for anything else
    (``javascript:``, ``data:``, a protocol-relative ``//host``)."""
    if not isinstance(value, str):
        return None
    if value.lower().startswith(("https://", "http://")) or (
        value.startswith("/") and not value.startswith("//")
    ):
        return value
    return None


@bp.app_template_filter("link_url")
def link_url_filter(value: Any) -> str | None:
    """Jinja filter :func:`link_url`."""
    return link_url(value)


@bp.app_template_filter("thousands")
def thousands_filter(number: Any) -> str:
    """A count with thousands separators (empty for None)."""
    return "" if number is None else f"{int(number):,}"


@bp.app_template_filter("when")
def when_filter(time: dt.datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM UTC`` (empty for None)."""
    return "" if time is None else time.strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------------------


@bp.get("/")
def index() -> Response:
    """The latest set, the runs to date with their totals, and the current collections."""
    connection = get_db()
    owner, repository = site_repository()
    latest_set = latest_completed_set(connection, owner, repository)
    every_run = latest_runs(connection)
    show_all = request.args.get("runs") == "all"
    rows = successes_first(table_runs(every_run, owner=owner, repository=repository))
    zip_rows = listing.current_zips(connection)
    response = current_app.make_response(
        render_template(
            "index.html",
            latest_set=latest_set,
            owner=owner,
            repository=repository,
            runs=rows if show_all else rows[:INDEX_RUNS],
            run_total=len(rows),
            show_all=show_all,
            totals=listing.summarize_runs(every_run),
            zips=zip_rows,
        )
    )
    modified = listing.newest(
        set_times(latest_set), run_times(every_run), *(row["datetime"] for row in zip_rows)
    )
    return conditional(response, modified)


@bp.get("/state.txt")
def state_txt() -> Response:
    """The runs to date as tab-separated text, sorted by path (machine-ci.md §9.1)."""
    run_list = latest_runs(get_db())
    response = text_response(state_text(listing.state_rows(run_list, base_url())))
    return conditional(response, run_times(run_list))


def collection_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One collection in ``index.json`` (a GeoParquet file also says how many rows it holds)."""
    entry = {
        "url": row["url"],
        "content_length": row["content_length"],
        "license": LICENSE_PHRASES.get(row["license_attr"] or "", row["license_attr"]),
    }
    if row["format"] == "parquet":
        entry["address_count"] = row["address_count"]
    return entry


#: How the name of a deduped address collection ends (openaddr.collect.dedupe.processed_name).
PROCESSED_SUFFIX = "-processed.zip"


@bp.get("/index.json")
def index_json() -> Response:
    """Where everything is (machine-ci.md §9.1), plus ``geojson_collections`` and ``geoparquet_collections`` per
    layer type (``{layer: {collection: {licence class: entry}}}``, like ``collections``) and
    ``processed_collections``, the deduped address collections, per area and licence class."""
    connection = get_db()
    base = base_url()
    latest_set = latest_completed_set(connection, *site_repository())
    collections: dict[str, dict[str, Any]] = {}
    processed: dict[str, dict[str, Any]] = {}
    by_format: dict[str, dict[str, dict[str, dict[str, Any]]]] = {"geojsonl": {}, "parquet": {}}
    zip_rows = listing.current_zips(connection)
    for row in zip_rows:
        if row["format"] == "zip":
            # the dedupe's -processed zips are recorded like the address zips; only their name tells them apart
            target = processed if row["url"].endswith(PROCESSED_SUFFIX) else collections
        else:
            target = by_format.setdefault(row["format"], {}).setdefault(row["layer"] or "addresses", {})
        target.setdefault(row["collection"], {})[row["license_attr"] or ""] = collection_entry(row)
    renders = {
        f"{key}_url": (latest_set or {}).get(key)
        for key in ("render_world", "render_europe", "render_usa", "render_geojson")
    }
    body = {
        "run_states_url": f"{base}/state.txt",
        "latest_run_processed_url": f"{base}/latest/run/{{source}}.zip",
        "tileindex_url": f"{base}/tiles/{{lon}}/{{lat}}.zip",
        "licenses_url": f"{base}/latest/licenses.json",
        "latest_set_url": f"{base}/latest/set",
        **renders,
        "collections": collections,
        "geojson_collections": by_format["geojsonl"],
        "geoparquet_collections": by_format["parquet"],
        "processed_collections": processed,
    }
    modified = listing.newest(set_times(latest_set), *(row["datetime"] for row in zip_rows))
    return conditional(jsonify(body), modified)


@bp.get("/latest/licenses.json")
def licenses_json() -> Response:
    """The licences of the latest successful runs, grouped by (licence, attribution)."""
    run_list = latest_runs(get_db(), successful=True)
    body = {"licenses": listing.license_groups(run_list)}
    return conditional(jsonify(body), run_times(run_list))


# --------------------------------------------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------------------------------------------


@bp.get("/latest/set")
def latest_set() -> BaseResponse:
    """302 to the newest completed set of ``SITE_OWNER``/``SITE_REPOSITORY``; 404 when there is none."""
    found = latest_completed_set(get_db(), *site_repository())
    if found is None:
        abort(404, description="No latest set found")
    return redirect(url_for("sets.set_page", set_id=found["id"]), code=302)


@bp.get("/sets/")
def sets_list() -> Response:
    """Sets, 25 per page, newest first (``?past=<id>&n=<n>``)."""
    past, size = page_before()
    page = listing.list_sets(get_db(), before=past, limit=size + 1)
    shown, more = page[:size], len(page) > size
    next_url = url_for("sets.sets_list", past=shown[-1]["id"], n=request.args.get("n")) if more else None
    response = current_app.make_response(render_template("sets.html", sets=shown, next_url=next_url))
    return conditional(response, listing.newest(*(set_times(row) for row in shown)))


def find_set(text: str) -> dict[str, Any]:
    """The set named in the URL; 400 for a bad id, 404 for an unknown one."""
    found = get_set(get_db(), set_id_arg(text))
    if found is None:
        abort(404, description=f"Set {text} not found")
    return found


@bp.get("/sets/<set_id>/")
def set_page(set_id: str) -> Response:
    """A set: summary (or "This set is incomplete"), renders, and its runs, problems first."""
    set_row = find_set(set_id)
    run_list = latest_runs(get_db(), set_id=set_row["id"], accepted_only=False)
    rows = problems_first(table_runs(run_list, owner=set_row["owner"], repository=set_row["repository"]))
    response = current_app.make_response(
        render_template("set.html", set=set_row, runs=rows, totals=listing.summarize_runs(run_list))
    )
    return conditional(response, listing.newest(set_times(set_row), run_times(run_list)))


@bp.get("/sets/<set_id>.json")
def set_json(set_id: str) -> Response:
    """A set as JSON (machine-ci.md §9.1 keys)."""
    set_row = find_set(set_id)
    body = {
        "id": set_row["id"],
        "commit_sha": set_row["commit_sha"],
        "datetime_start": set_row["datetime_start"].isoformat() if set_row["datetime_start"] else None,
        "datetime_end": set_row["datetime_end"].isoformat() if set_row["datetime_end"] else None,
        "render_world_url": set_row["render_world"],
        "render_europe_url": set_row["render_europe"],
        "render_usa_url": set_row["render_usa"],
        "render_geojson_url": set_row["render_geojson"],
    }
    return conditional(jsonify(body), set_times(set_row))


@bp.get("/sets/<set_id>/state.txt")
def set_state_txt(set_id: str) -> Response:
    """``state.txt`` of one set: the newest run of each of its entries."""
    set_row = find_set(set_id)
    run_list = latest_runs(get_db(), set_id=set_row["id"], accepted_only=False)
    response = text_response(state_text(listing.state_rows(run_list, base_url())))
    return conditional(response, listing.newest(set_times(set_row), run_times(run_list)))


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------


def job_icon(status: bool | None) -> str:
    """✔ success, ✘ failure (not the ❌ emoji: a machine without an emoji font shows it as an empty box), nothing while pending."""
    return "" if status is None else ("✔" if status else "✘")


@bp.get("/jobs/")
def jobs_list() -> Response:
    """Jobs, 25 per page, newest first by sequence (``?past=<sequence>&n=<n>``)."""
    past, size = page_before()
    connection = get_db()
    page = listing.list_jobs(connection, before=past, limit=size + 1)
    shown, more = page[:size], len(page) > size
    next_url = (
        url_for("sets.jobs_list", past=shown[-1]["sequence"], n=request.args.get("n")) if more else None
    )
    for job in shown:
        job["icon"] = job_icon(job["status"])
        job["file_count"] = len(job["file_states"] or {})
    response = current_app.make_response(render_template("jobs.html", jobs=shown, next_url=next_url))
    modified = listing.newest(
        *(listing.newest(job["datetime_start"], job["datetime_end"]) for job in shown),
        listing.newest_job_run_time(connection, (job["id"] for job in shown)),
    )
    return conditional(response, modified)


def status_phrase(job: Mapping[str, Any]) -> str:
    """What a job page says first."""
    if job["status"] is True:
        return "This job succeeded."
    if job["status"] is False:
        return "This job failed." if job["datetime_end"] else "This job failed; some files are still running."
    return "This job is still running."


def commit_url(job: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(url, sha)`` of the commit a job's GitHub status is on, from its statuses URL (None when unknown)."""
    match = _STATUS_SHA.search(job.get("github_status_url") or "")
    if match is None:
        return None, None
    sha = match.group(1)
    if not (job.get("github_owner") and job.get("github_repository")):
        return None, sha
    return f"https://github.com/{job['github_owner']}/{job['github_repository']}/commit/{sha}", sha


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> Response:
    """A job: its status, its files (failed, pending, succeeded, then by path) and one row per run."""
    connection = get_db()
    job = get_job(connection, job_id)
    if job is None:
        abort(404, description=f"Job {job_id} not found")
    run_list = job_runs(connection, job_id)
    by_id = {run["id"]: run for run in run_list}
    order = {False: 0, None: 1, True: 2}
    files = []
    for path, file_status in sorted(
        (job["file_states"] or {}).items(), key=lambda item: (order[item[1]], item[0])
    ):
        result = (job["file_results"] or {}).get(path) or {}
        entries = []
        for entry in result.get("entries") or []:
            state = listing.run_state(by_id.get(entry.get("run_id"), {}))
            entries.append({**entry, "state": state})
        files.append(
            {
                "path": path,
                "icon": job_icon(file_status),
                "status": file_status,
                "message": result.get("message"),
                "entries": entries,
            }
        )
    sha_url, sha = commit_url(job)
    rows = table_runs(run_list, owner=job["github_owner"], repository=job["github_repository"])
    response = current_app.make_response(
        render_template(
            "job.html",
            job=job,
            phrase=status_phrase(job),
            files=files,
            runs=rows,
            commit_url=sha_url,
            commit_sha=sha,
        )
    )
    modified = listing.newest(job["datetime_start"], job["datetime_end"], run_times(run_list))
    return conditional(response, modified)
