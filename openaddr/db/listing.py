"""What the results site's set, job and index pages list (machine-ci.md §9.1), as plain Python over the database.

Queries (each takes an engine or a connection, see :mod:`openaddr.db.runs`, and returns plain dicts):

* :func:`list_sets` and :func:`list_jobs`: a page of sets (by id) or jobs (by ``sequence``), newest first;
* :func:`newest_job_run_time`: when the newest run of some jobs was recorded (a jobs page's ``Last-Modified``);
* :func:`current_zips`: the current collections of at least 1 KiB (7.5.5 left smaller ones out), GeoParquet files
  only when they hold rows (an empty one still has its schema).

And what is derived from runs without the database:

* :func:`summarize_runs`: the totals of the index page;
* :func:`run_problems`: the problems a runs table shows for a run ("source says to skip", "cache failed (log)", …);
* :func:`state_rows`: the rows of ``state.txt`` (§9.1 columns plus ``layer`` and ``name``);
* :func:`license_groups`: ``/latest/licenses.json``, sources grouped by (licence, attribution).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import sqlalchemy as sa

from openaddr.db.runs import transaction
from openaddr.db.schema import jobs, row_dict, runs, sets, zips
from openaddr.errors import SourceProblem

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable, Mapping

    from openaddr.db.runs import Bind

#: Collection zips smaller than this are not listed (7.5.5: empty collections).
MIN_ZIP_SIZE = 1024
#: Prefix of every source path.
SOURCES_PREFIX = "sources/"
#: Columns of ``state.txt`` (machine-ci.md §9.1), ``layer`` and ``name`` added at the end.
STATE_TXT_COLUMNS = (
    "source",
    "cache",
    "sample",
    "geometry type",
    "address count",
    "version",
    "fingerprint",
    "cache time",
    "processed",
    "process time",
    "process hash",
    "output",
    "attribution required",
    "attribution name",
    "share-alike",
    "code version",
    "layer",
    "name",
)
#: State keys whose values are URLs (made absolute in ``state.txt``).
URL_COLUMNS = ("cache", "sample", "processed", "output")


# --------------------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------------------


def list_sets(bind: Bind, *, before: int | None = None, limit: int = 25) -> list[dict[str, Any]]:
    """Sets newest first (by id), those with an id below ``before`` when given, at most ``limit``."""
    query = sa.select(sets).order_by(sets.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(sets.c.id < before)
    with transaction(bind) as connection:
        return [row_dict(row) for row in connection.execute(query).all()]


def list_jobs(bind: Bind, *, before: int | None = None, limit: int = 25) -> list[dict[str, Any]]:
    """Jobs newest first (by ``sequence``), those with a sequence below ``before`` when given, at most ``limit``."""
    query = sa.select(jobs).where(jobs.c.sequence.is_not(None)).order_by(jobs.c.sequence.desc()).limit(limit)
    if before is not None:
        query = query.where(jobs.c.sequence < before)
    with transaction(bind) as connection:
        return [row_dict(row) for row in connection.execute(query).all()]


def newest_job_run_time(bind: Bind, job_ids: Iterable[str]) -> dt.datetime | None:
    """The newest ``datetime_tz`` of the runs of these jobs, or None (a job's file states follow its runs).

    ``MAX`` keeps the column's type, so SQLite's text comes back as an aware datetime too.
    """
    ids = list(job_ids)
    if not ids:
        return None
    with transaction(bind) as connection:
        value: dt.datetime | None = connection.execute(
            sa.select(sa.func.max(runs.c.datetime_tz)).where(runs.c.job_id.in_(ids))
        ).scalar_one()
    return value


def current_zips(bind: Bind, *, min_size: int = MIN_ZIP_SIZE) -> list[dict[str, Any]]:
    """The current collections of at least ``min_size`` bytes (GeoParquet files: with at least one row), by format
    (:data:`~openaddr.db.schema.ZIP_FORMATS` order: CSV zips, GeoJSON, GeoParquet), then by layer, collection (in
    :data:`~openaddr.db.schema.COLLECTIONS` order) and licence class."""
    from openaddr.db.schema import COLLECTIONS, ZIP_FORMATS

    query = sa.select(zips).where(
        zips.c.is_current.is_(True),
        zips.c.content_length >= min_size,
        sa.or_(zips.c.format != "parquet", zips.c.address_count > 0),
    )
    with transaction(bind) as connection:
        rows = [row_dict(row) for row in connection.execute(query).all()]
    order = {name: index for index, name in enumerate(COLLECTIONS)}
    formats = {name: index for index, name in enumerate(ZIP_FORMATS)}
    return sorted(
        rows,
        key=lambda row: (
            formats.get(row["format"], len(formats)),
            row["layer"] is not None,
            row["layer"] or "",
            order.get(row["collection"], len(order)),
            row["license_attr"] or "",
            row["url"],
        ),
    )


def newest(*times: dt.datetime | None) -> dt.datetime | None:
    """The latest of some times, ignoring None (None when all are)."""
    known = [time for time in times if time is not None]
    return max(known) if known else None


# --------------------------------------------------------------------------------------------------------------
# Derived from runs
# --------------------------------------------------------------------------------------------------------------


def source_name(source_path: str | None) -> str:
    """A source path relative to ``sources/`` (``sources/us/wy/park.json`` → ``us/wy/park.json``)."""
    path = source_path or ""
    return path[len(SOURCES_PREFIX) :] if path.startswith(SOURCES_PREFIX) else path


def run_state(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's recorded state as a dict (empty when the run has none: pending, timed out, crashed)."""
    state = run.get("state")
    return dict(state) if isinstance(state, dict) else {}


def summarize_runs(run_list: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Totals of the index page (7.5.5 ``summarize_runs``).

    :return: ``addresses`` (sum of address counts), ``sources`` (distinct source paths), ``runs``, ``completed``
        (processed), ``failed_cache`` (not skipped and no cache), ``not_processed`` (cached but not processed)
    """
    listed = list(run_list)
    states = [run_state(run) for run in listed]
    cached = [state for state in states if state.get("cache")]
    processed = [state for state in states if state.get("processed")]
    return {
        "addresses": sum(int(run.get("address_count") or 0) for run in listed),
        "sources": len({run.get("source_path") for run in listed}),
        "runs": len(listed),
        "completed": len(processed),
        "failed_cache": len(
            [state for state in states if not state.get("cache") and not state.get("skipped")]
        ),
        "not_processed": len([state for state in cached if not state.get("processed")]),
    }


def run_problems(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What a runs table says is wrong with a run: ``[{"text", "url"}]`` (``url``: the log, or None).

    The phrases of machine-ci.md §9.1: "source says to skip", "cache failed" (log), "missing conform",
    "incomplete coverage", "unknown" (log) for a failure with no better name; other source problems by their text,
    and the quality gate's warning. A pending run has none.
    """
    state = run_state(run)
    problem = run.get("source_problem") or state.get("source problem")
    log_url = state.get("output") or None
    problems: list[dict[str, Any]] = []
    if state.get("skipped") or problem == SourceProblem.skip_source.value:
        problems.append({"text": "source says to skip", "url": None})
    elif problem == SourceProblem.missing_conform.value:
        problems.append({"text": "missing conform", "url": None})
    elif problem == SourceProblem.no_coverage.value:
        problems.append({"text": "incomplete coverage", "url": None})
    elif problem:
        problems.append({"text": str(problem), "url": log_url})
    if run.get("status") is False and not problems:
        if not state:
            # A timeout or a crash: no state to name a step from, the message says what happened.
            problems.append({"text": run.get("message") or "unknown", "url": None})
        elif not state.get("cache"):
            problems.append({"text": "cache failed", "url": log_url})
        else:
            problems.append({"text": "unknown", "url": log_url})
    if run.get("warning"):
        problems.append({"text": str(run["warning"]), "url": None})
    return problems


def _cell(value: Any) -> str:
    """A value as ``index.txt`` writes it: null empty, booleans ``True``/``False``, the rest as text."""
    return "" if value is None else str(value)


def state_rows(run_list: Iterable[Mapping[str, Any]], base_url: str) -> list[list[str]]:
    """The rows of ``state.txt`` (:data:`STATE_TXT_COLUMNS`), sorted by path, layer and name.

    :param base_url: the site's public URL; relative URLs in a state are made absolute against it
    """
    rows = []
    for run in run_list:
        state = run_state(run)
        values: dict[str, Any] = {column: state.get(column) for column in STATE_TXT_COLUMNS}
        values["source"] = source_name(run.get("source_path"))
        values["layer"] = run.get("source_layer")
        values["name"] = run.get("layer_name")
        if values["code version"] is None:
            values["code version"] = run.get("code_version")
        for column in URL_COLUMNS:
            url = values[column]
            if isinstance(url, str) and url and "://" not in url:
                values[column] = urljoin(base_url.rstrip("/") + "/", url)
        rows.append([_cell(values[column]) for column in STATE_TXT_COLUMNS])
    return sorted(rows, key=lambda row: (row[0], row[-2], row[-1]))


def source_entry(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run's layer entry in its recorded source file (``source_data``), or an empty dict.

    A v2 file's entry is found by layer type and name; a layerless v1 file is its own single entry.
    """
    data = run.get("source_data")
    if not data:
        return {}
    try:
        document = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    layers = document.get("layers")
    if not isinstance(layers, dict):
        return document
    for entry in layers.get(run.get("source_layer") or "") or []:
        if isinstance(entry, dict) and entry.get("name") == run.get("layer_name"):
            return entry
    return {}


def _text(value: Any) -> str | None:
    """A licence or website value of a source file as text (v2 licences may be objects with ``text``/``url``)."""
    if isinstance(value, dict):
        value = value.get("text") or value.get("url")
    return str(value) if value not in (None, "") else None


def license_groups(run_list: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``/latest/licenses.json``'s ``licenses``: ``[{license, attribution, sources: [[source, website], …]}]``.

    Grouped by (licence, attribution), groups and their sources sorted. Licence and website come from the run's
    state (``license``, ``website``), else from its source file's entry; the attribution is the state's
    ``attribution name`` unless ``attribution required`` is ``"false"`` (null then, and when no name is known).
    """
    groups: dict[tuple[str | None, str | None], set[tuple[str, str | None]]] = {}
    for run in run_list:
        state = run_state(run)
        license_text = _text(state.get("license"))
        website = _text(state.get("website"))
        if license_text is None or website is None:
            entry = source_entry(run)
            license_text = license_text or _text(entry.get("license"))
            website = website or _text(entry.get("website"))
        required = state.get("attribution required")
        attribution = None if required == "false" else _text(state.get("attribution name"))
        groups.setdefault((license_text, attribution), set()).add(
            (source_name(run.get("source_path")), website)
        )
    return [
        {
            "license": license_text,
            "attribution": attribution,
            "sources": [list(pair) for pair in sorted(members, key=lambda pair: (pair[0], pair[1] or ""))],
        }
        for (license_text, attribution), members in sorted(
            groups.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")
        )
    ]
