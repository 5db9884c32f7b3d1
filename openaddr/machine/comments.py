"""The pull-request comment of a CI job (machine-ci.md §2.3).

When a job with a comments URL finishes, :func:`post_job_comment` posts **one** comment summarising it and updates
it in place on later changes: the comment carries the hidden marker ``<!-- openaddr-job:<id> -->`` and its id is kept
in ``jobs.github_comment_id``. When that comment is gone (404), the pull request's comments are searched for the
marker, and failing that a new one is posted.

The body (:func:`job_comment_body`) is a Markdown table, one row per path, layer and name: status (✔ success, ❌
failure, ⚠ warning, skipped), source problem, address count, change against the latest merged run of the same entry
(:func:`openaddr.db.results.latest_runs`: merged, accepted and successful; in %, when both have counts), and links to the run page, its sample,
its log, its zip and its preview image; below the table, each success's preview as a Markdown image (the site's
``/runs/<id>/preview.png``, linking to the run page; at most :data:`PREVIEW_LIMIT`). Paths and problems come from strangers' pull requests: every cell is escaped
(:func:`cell`) so that no text can break the table, inject HTML or links, or mention anyone, and the body stays under
GitHub's 65,536 characters, saying how many rows were cut.

A comment never fails a job: a GitHub error is logged and recorded in ``jobs.github_comment_error`` (cleared by the
next post that succeeds). Gagging is the caller's (the run listener does not post when statuses are gagged).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import sqlalchemy as sa
from github import GithubException
from github.IssueComment import IssueComment
from github.PaginatedList import PaginatedList

from openaddr.db import jobs as db_jobs, results, runs as db_runs
from openaddr.db.schema import jobs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import github

log = logging.getLogger(__name__)

#: GitHub refuses comment bodies over 65,536 characters; the body stays this far under, a margin for the footer.
BODY_LIMIT = 65_000
#: Previews shown as images below the table, at most (the rest are linked from their rows).
PREVIEW_LIMIT = 10
#: Longest text of one cell (a path or a problem): longer ones are cut with an ellipsis.
CELL_LIMIT = 300

_COMMENTS_URL = re.compile(r"^(?P<repo>.*/repos/[^/]+/[^/]+)/issues/(?P<number>[0-9]+)/comments/?$")
#: Characters that mean something to GitHub's Markdown inside a table cell: backslash-escaped.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&!#$:{}()])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")

STATUS_LABELS = {
    "success": "✔ success",
    "failure": "❌ failure",
    "warning": "⚠ warning",
    "skipped": "skipped",
    "pending": "⏳ pending",
}
#: Order of the rows: what needs looking at first (cut rows are the last ones).
_STATUS_ORDER = {"failure": 0, "warning": 1, "pending": 2, "skipped": 3, "success": 4}


def marker(job_id: str) -> str:
    """The hidden marker that identifies the comment of job ``job_id``."""
    return f"<!-- openaddr-job:{job_id} -->"


def cell(text: Any, limit: int = CELL_LIMIT) -> str:
    """``text`` as the content of one Markdown table cell, shown literally.

    Line breaks and control characters become spaces; Markdown and HTML punctuation (``|``, backticks, ``<``,
    ``&``, brackets, …) is backslash-escaped, so a stranger's path cannot end the cell, open a code span, inject
    HTML or a link; ``@`` is followed by a zero-width space, so nobody is mentioned (and notified) by a path.
    """
    value = _CONTROL.sub(" ", "" if text is None else str(text)).strip()
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return _MARKDOWN.sub(r"\\\1", value).replace("@", "@\u200b")


def link(label: str, url: str | None) -> str | None:
    """A Markdown link to an http(s) URL (percent-encoded so it cannot end the link), or None for any other URL."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    safe = urllib.parse.quote(str(url), safe=":/?#@!$&'*+,;=%~-._")
    safe = safe.replace("(", "%28").replace(")", "%29").replace("|", "%7C")
    return f"[{label}]({safe})"


def airflow_log_url(airflow_url: str | None, run: Mapping[str, Any]) -> str | None:
    """The Airflow UI's page of the task instance that made ``run`` (its log), or None.

    :param airflow_url: the Airflow UI's base URL (``[api] base_url``), None when unknown
    :param run: the run row (``airflow_dag_id``, ``airflow_dag_run_id``, ``airflow_task_id``, ``airflow_map_index``,
        ``airflow_try_number``)
    """
    if not airflow_url or not run.get("airflow_dag_id") or not run.get("airflow_dag_run_id"):
        return None
    dag_id, dag_run_id, task_id = (
        urllib.parse.quote(str(run[key]), safe="")
        for key in ("airflow_dag_id", "airflow_dag_run_id", "airflow_task_id")
    )
    url = f"{airflow_url.rstrip('/')}/dags/{dag_id}/runs/{dag_run_id}/tasks/{task_id}"
    map_index = run.get("airflow_map_index")
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{map_index}"
    if run.get("airflow_try_number"):
        url += f"?try_number={run['airflow_try_number']}"
    return url


# --------------------------------------------------------------------------------------------------------------
# The body
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommentRow:
    """One row of the table: a layer entry of one of the job's files.

    :param path: ``sources/….json``
    :param layer: the layer type (None for a file whose entries could not be read)
    :param name: the entry's name
    :param status: ``success``, ``failure``, ``warning``, ``skipped`` or ``pending``
    :param problem: the source problem, the failure message or the quality warning
    :param count: address count
    :param change: change of the count against the latest merged run, in %, or None
    :param links: Markdown links (already escaped)
    :param preview: the URL of the run's preview image (the site's ``/runs/<id>/preview.png`` when the site's URL is
        known, else the published file), or None
    :param page: the run's page on the site (what the image links to), or None
    """

    path: str
    layer: str | None
    name: str | None
    status: str
    problem: str | None
    count: int | None
    change: float | None
    links: tuple[str, ...]
    preview: str | None = None
    page: str | None = None

    def markdown(self) -> str:
        """The table row."""
        count = f"{self.count:,}" if self.count is not None else ""
        change = f"{self.change:+.1f} %" if self.change is not None else ""
        return (
            f"| {STATUS_LABELS[self.status]} | {cell(self.path)} | {cell(self.layer)} | {cell(self.name)} "
            f"| {cell(self.problem)} | {count} | {change} | {' · '.join(self.links)} |"
        )


def change_percent(count: int | None, previous: Mapping[str, Any] | None) -> float | None:
    """The change of ``count`` against the previous run's address count in %, when both are known (and the previous
    one is not zero)."""
    before = (previous or {}).get("address_count")
    if count is None or not before:
        return None
    return float((count - before) * 100.0 / before)


def job_rows(
    bind: db_runs.Bind, job: Mapping[str, Any], *, base_url: str | None, airflow_url: str | None
) -> list[CommentRow]:
    """The table rows of a job: every planned entry of every file and every run the job has, failures first.

    :param job: the job row (after :func:`openaddr.db.jobs.update_job`)
    :param base_url: the results site (links to run pages and samples), None when unknown
    :param airflow_url: the Airflow UI (log links), None when unknown
    """
    runs = {run["id"]: run for run in db_runs.job_runs(bind, job["id"])}
    rows: list[CommentRow] = []
    file_results: Mapping[str, Any] = job.get("file_results") or {}
    paths = sorted(set(file_results) | set(job.get("file_states") or {}))
    for path in paths:
        result = file_results.get(path)
        entries = (result or {}).get("entries") or []
        # The latest merged, accepted success of each entry from before this job (§2.3, §10).
        latest = {
            (run["source_path"], run["source_layer"], run["layer_name"]): run
            for run in results.latest_runs(bind, source_path=path, successful=True, exclude_job_id=job["id"])
        }
        if not entries:
            rows.append(CommentRow(path, None, None, "pending", None, None, None, ()))
            continue
        for entry in entries:
            run = runs.get(entry.get("run_id")) if entry.get("run_id") is not None else None
            status = results.run_label(run) if run is not None else "pending"
            count = run.get("address_count") if run else None
            previous = latest.get((path, entry.get("layer"), entry.get("name")))
            rows.append(
                CommentRow(
                    path,
                    entry.get("layer"),
                    entry.get("name"),
                    status,
                    _problem(run, status),
                    count,
                    change_percent(count, previous),
                    _links(run, base_url, airflow_url) if run else (),
                    *(_preview(run, base_url) if run else (None, None)),
                )
            )
    rows.sort(key=lambda row: (_STATUS_ORDER[row.status], row.path, row.layer or "", row.name or ""))
    return rows


def _problem(run: Mapping[str, Any] | None, status: str) -> str | None:
    if run is None:
        return None
    problem = run.get("source_problem")
    if status == "warning":
        return "; ".join(text for text in (run.get("warning"), problem) if text)
    if status == "failure" and not problem:
        return str(run.get("message") or "") or None
    return str(problem) if problem else None


def _links(run: Mapping[str, Any], base_url: str | None, airflow_url: str | None) -> tuple[str, ...]:
    state = run.get("state") or {}
    site = base_url.rstrip("/") if base_url else None
    candidates = (
        ("run", f"{site}/runs/{run['id']}/" if site else None),
        ("sample", f"{site}/runs/{run['id']}/sample.html" if site and state.get("sample") else None),
        ("log", airflow_log_url(airflow_url, run) or state.get("output")),
        ("zip", state.get("processed")),
        ("preview", state.get("preview")),
    )
    return tuple(found for label, url in candidates if (found := link(label, url)) is not None)


def _preview(run: Mapping[str, Any], base_url: str | None) -> tuple[str | None, str | None]:
    """The preview image's URL and the run page's, when the run has a published preview."""
    published = (run.get("state") or {}).get("preview")
    if not link("preview", published):
        return None, None
    if not base_url:
        return published, None
    site = base_url.rstrip("/")
    return f"{site}/runs/{run['id']}/preview.png", f"{site}/runs/{run['id']}/"


def preview_markdown(row: CommentRow) -> str | None:
    """A row's preview as a Markdown image (linking to the run's page when known), under a line naming the
    entry; None when the row has no preview."""
    image = link(f"preview of {cell(row.path)} {cell(row.layer)}/{cell(row.name)}", row.preview)
    if image is None:
        return None
    target = link(f"!{image}", row.page) if row.page else None
    title = f"{cell(row.path)} · {cell(row.layer)} / {cell(row.name)}"
    return f"{title}\n\n{target or '!' + image}"


def _headline(job: Mapping[str, Any], rows: Iterable[CommentRow], base_url: str | None) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    total = sum(counts.values())
    if job.get("status") is None:
        verdict = "⏳ Checking"
    elif job["status"]:
        verdict = "✔ Passed"
    else:
        verdict = "❌ Failed"
    parts = [
        f"{counts[key]} {key}"
        for key in ("failure", "warning", "pending", "skipped", "success")
        if key in counts
    ]
    job_link = link(f"job {job['id']}", f"{base_url.rstrip('/')}/jobs/{job['id']}" if base_url else None)
    line = f"**OpenAddresses Machine: {verdict}** — {total} {'entry' if total == 1 else 'entries'}: {', '.join(parts) or 'none'}"
    return f"{line} ({job_link})" if job_link else f"{line} (job {cell(job['id'])})"


HEADER = "| status | source | layer | name | problem | addresses | change | links |\n|---|---|---|---|---|---:|---:|---|"


def job_comment_body(
    job: Mapping[str, Any], rows: list[CommentRow], *, base_url: str | None, limit: int = BODY_LIMIT
) -> str:
    """The comment of a job: the marker, a headline, the table and, when rows had to be cut to stay under
    ``limit`` characters, a line saying how many.

    :param rows: from :func:`job_rows`, in display order
    """
    head = f"{marker(job['id'])}\n{_headline(job, rows, base_url)}\n\n"
    commit = job.get("commit_sha")
    if commit:
        head += f"Commit {cell(commit)[:12]}. "
    head += "Change is against the latest merged run of the same source, layer and name.\n\n"
    body = head + HEADER
    kept = 0
    for row in rows:
        line = "\n" + row.markdown()
        # Room for the note about cut rows (under 200 characters).
        if len(body) + len(line) + 200 > limit:
            break
        body += line
        kept += 1
    if kept < len(rows):
        cut = len(rows) - kept
        body += (
            f"\n\n_{cut} more row{'s' if cut != 1 else ''} not shown: a comment holds at most 65,536 characters; "
            "the job page lists every one._"
        )
    previews = [text for row in rows[:kept] if (text := preview_markdown(row)) is not None]
    shown = 0
    for number, text in enumerate(previews):
        block = ("\n\n**Previews**" if number == 0 else "") + "\n\n" + text
        if shown >= PREVIEW_LIMIT or len(body) + len(block) + 200 > limit:
            break
        body += block
        shown += 1
    if shown < len(previews):
        body += f"\n\n_{len(previews) - shown} more preview{'s' if len(previews) - shown != 1 else ''} on the run pages._"
    return body + "\n"


# --------------------------------------------------------------------------------------------------------------
# Posting
# --------------------------------------------------------------------------------------------------------------


class CommentError(Exception):
    """The comment could not be posted or updated (recorded in ``jobs.github_comment_error``)."""


def _repository_api(comments_url: str) -> str:
    match = _COMMENTS_URL.match(comments_url)
    if match is None:
        raise CommentError(f"not an issue comments URL: {comments_url}")
    return match["repo"]


def _request(client: github.Github, verb: str, url: str, body: Mapping[str, Any] | None = None) -> Any:
    try:
        _, data = client.requester.requestJsonAndCheck(
            verb, url, input=dict(body) if body is not None else None
        )
    except GithubException:
        raise
    except (requests.RequestException, OSError, ValueError, AssertionError) as exc:
        raise CommentError(f"{verb} {url}: {type(exc).__name__}: {exc}") from exc
    return data


def _find_by_marker(client: github.Github, comments_url: str, text: str) -> dict[str, Any] | None:
    comments = PaginatedList(IssueComment, client.requester, comments_url, {"per_page": 100})
    try:
        for comment in comments:
            if text in (comment.body or ""):
                return {"id": comment.id, "body": comment.body}
    except (requests.RequestException, OSError, ValueError) as exc:
        raise CommentError(f"GET {comments_url}: {type(exc).__name__}: {exc}") from exc
    return None


def _post(client: github.Github, job: Mapping[str, Any], body: str) -> int:
    """Create or update the job's comment; return its id."""
    comments_url = str(job["github_comments_url"])
    base_url = client.requester.base_url
    if _origin(comments_url) != _origin(base_url):
        raise CommentError(f"the comments URL {comments_url} is not on the GitHub client's {base_url}")
    repo_api = _repository_api(comments_url)
    existing: dict[str, Any] | None = None
    if job.get("github_comment_id"):
        try:
            existing = _request(client, "GET", f"{repo_api}/issues/comments/{job['github_comment_id']}")
        except GithubException as exc:
            if exc.status != 404:
                raise
            log.info(
                "Comment %s of job %s is gone: searching for its marker", job["github_comment_id"], job["id"]
            )
    if existing is None:
        existing = _find_by_marker(client, comments_url, marker(job["id"]))
    if existing is None:
        created = _request(client, "POST", comments_url, {"body": body})
        log.info("Posted comment %s for job %s", created.get("id"), job["id"])
        return int(created["id"])
    if existing.get("body") != body:
        _request(client, "PATCH", f"{repo_api}/issues/comments/{existing['id']}", {"body": body})
        log.info("Updated comment %s of job %s", existing["id"], job["id"])
    return int(existing["id"])


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return (
        parts.scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(parts.scheme),
    )


def post_job_comment(
    engine: db_runs.Bind,
    client: github.Github,
    job_id: str,
    *,
    base_url: str | None = None,
    airflow_url: str | None = None,
) -> int | None:
    """Post or update the pull-request comment of a job that has a comments URL; never raises for GitHub.

    On PostgreSQL the job's row is locked while GitHub is asked, so that two listeners finishing the same job at once
    cannot both create a comment. The comment's id is stored in ``jobs.github_comment_id``; an error is logged and
    stored in ``jobs.github_comment_error`` (cleared when a post succeeds).

    :param base_url: the results site (links), None when unknown
    :param airflow_url: the Airflow UI (log links), None when unknown
    :return: the comment's id, or None when the job has no comments URL or the post failed
    :raises LookupError: no job has this id
    """
    if engine.dialect.name != "postgresql":
        # SQLite serialises writers for a whole transaction: GitHub is not asked inside one.
        return _post_and_record(engine, client, job_id, base_url, airflow_url)
    with db_runs.transaction(engine) as connection:
        connection.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        return _post_and_record(connection, client, job_id, base_url, airflow_url)


def _post_and_record(
    bind: db_runs.Bind, client: github.Github, job_id: str, base_url: str | None, airflow_url: str | None
) -> int | None:
    job = db_jobs.get_job(bind, job_id)
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    if not job.get("github_comments_url"):
        return None
    runs = db_runs.job_runs(bind, job_id)
    commit = next((run["commit_sha"] for run in runs if run.get("commit_sha")), None)
    rows = job_rows(bind, job, base_url=base_url, airflow_url=airflow_url)
    body = job_comment_body({**job, "commit_sha": commit}, rows, base_url=base_url)
    comment_id: int | None = None
    error: str | None = None
    try:
        comment_id = _post(client, job, body)
    except GithubException as exc:
        error = f"HTTP {exc.status}: {exc.data}"
    except CommentError as exc:
        error = str(exc)
    if error is not None:
        error = f"Could not post the pull-request comment: {error}"[:1000]
        log.error("Job %s: %s", job_id, error)
    values: dict[str, Any] = {"github_comment_error": error}
    if comment_id is not None:
        values["github_comment_id"] = comment_id
    with db_runs.transaction(bind) as connection:
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(values))
    return comment_id
