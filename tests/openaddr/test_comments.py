"""The pull-request comment of a CI job (machine-ci.md §2.3), posted to the fake GitHub and read back as GitHub would
render it (markdown-it-py's CommonMark with GFM tables), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from markdown_it import MarkdownIt

from openaddr.db.jobs import create_job, create_set, get_job, update_job
from openaddr.db.runs import AirflowTask, insert_run
from openaddr.db.schema import jobs
from openaddr.machine.comments import (
    BODY_LIMIT,
    CommentRow,
    cell,
    job_comment_body,
    marker,
    post_job_comment,
)
from tests.openaddr.test_github import fast_client

if TYPE_CHECKING:
    import github

    from tests.github_server import FakeGitHub

OWNER, REPO, PULL_NUMBER = "openaddresses", "openaddresses", 7
SITE, AIRFLOW, FILES = "https://results.test", "https://airflow.test", "https://data.test/runs"
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
COMMENTS = f"/repos/{OWNER}/{REPO}/issues/{PULL_NUMBER}/comments"


@pytest.fixture
def client(fake_github: FakeGitHub) -> github.Github:
    return fast_client(fake_github.base_url)


def state(count: int | None, *, files: bool = True, problem: str | None = None) -> dict[str, Any]:
    names = {"processed": "out.zip", "sample": "sample.json", "cache": "cache.zip", "preview": "preview.png"}
    return {
        "address count": count,
        "source problem": problem,
        "output": "output.txt",
        **(names if files else {}),
    }


def urls(run_key: str) -> dict[str, str]:
    return {
        key: f"{FILES}/{run_key}/{name}"
        for key, name in (
            ("processed", "out.zip"),
            ("sample", "sample.json"),
            ("cache", "cache.zip"),
            ("preview", "preview.png"),
            ("output", "output.txt"),
        )
    }


def make_job(db: sa.Connection, fake_github: FakeGitHub, entries: dict[str, dict[str, Any]]) -> str:
    """A finished job of a pull request: one run per ``{path: {count, problem, …}}``, recorded, merged or not."""
    job_id = str(uuid.uuid4())
    create_job(
        db,
        job_id=job_id,
        task_files={f"blob-{i}": path for i, path in enumerate(entries)},
        github_owner=OWNER,
        github_repository=REPO,
        github_comments_url=fake_github.url(COMMENTS),
    )
    for i, (path, entry) in enumerate(entries.items()):
        failed = entry.get("problem") is not None
        insert_run(
            db,
            source_path=path,
            source_layer="addresses",
            layer_name="primary",
            job_id=job_id,
            commit_sha="c" * 40,
            task=AirflowTask("openaddr_ci", f"ci__{job_id}", "process_source", map_index=i),
            state=state(entry.get("count"), files=not failed, problem=entry.get("problem")),
            urls=urls(f"{job_id}-{i}") if not failed else {"output": f"{FILES}/{job_id}-{i}/output.txt"},
            warning=entry.get("warning"),
            now=NOW,
        )
    update_job(db, job_id, planned={path: [("addresses", "primary")] for path in entries})
    return job_id


def merged_run(db: sa.Connection, path: str, count: int) -> int:
    """A run of a set (merged work) of ``path`` from the day before."""
    set_id = create_set(db, owner=OWNER, repository=REPO, commit_sha="b" * 40)
    return insert_run(
        db,
        source_path=path,
        source_layer="addresses",
        layer_name="primary",
        set_id=set_id,
        state=state(count),
        now=NOW - dt.timedelta(days=1),
    )


def rendered(body: str) -> tuple[list[list[str]], list[str], list[str]]:
    """GitHub's view of a comment: the table's rows as the text of their cells, every link's href, and the kinds of
    every raw HTML token (GitHub would render those)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    rows: list[list[str]] = []
    hrefs: list[str] = []
    html: list[str] = []

    def text(children: list[Any]) -> str:
        parts = []
        for child in children:
            if child.type in ("text", "code_inline"):
                parts.append(child.content)
            if child.type == "link_open":
                hrefs.append(child.attrs["href"])
            if child.type.startswith("html"):
                html.append(child.type)
        return "".join(parts)

    in_row = False
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
            in_row = True
        elif token.type == "tr_close":
            in_row = False
        elif token.type == "inline" and token.children is not None:
            content = text(token.children)
            if in_row:
                rows[-1].append(content)
        elif token.type.startswith("html"):
            html.append(token.type)
    return rows, hrefs, html


def images(body: str) -> list[tuple[str, str, str | None]]:
    """Every image GitHub would show: its source, its alt text and the link around it (None when not linked)."""
    found: list[tuple[str, str, str | None]] = []
    for token in MarkdownIt("commonmark").enable("table").parse(body):
        link: str | None = None
        for child in token.children or []:
            if child.type == "link_open":
                link = str(child.attrs["href"])
            elif child.type == "link_close":
                link = None
            elif child.type == "image":
                found.append((str(child.attrs["src"]), child.content, link))
    return found


def test_a_finished_job_posts_one_comment(
    db: sa.Connection, fake_github: FakeGitHub, client: github.Github
) -> None:
    park, broken = "sources/us/wy/park.json", "sources/us/ca/broken.json"
    merged_run(db, park, 1000)
    job_id = make_job(
        db, fake_github, {park: {"count": 1100}, broken: {"problem": "Could not download source data"}}
    )

    comment_id = post_job_comment(db, client, job_id, base_url=SITE, airflow_url=AIRFLOW)

    assert comment_id is not None
    (comment,) = fake_github.comments.values()
    assert comment["id"] == comment_id
    assert (comment["owner"], comment["repository"], comment["issue"]) == (OWNER, REPO, PULL_NUMBER)
    assert "ci-token" not in comment["authorization"]  # the client's own token
    assert comment["body"].startswith(marker(job_id))
    job = get_job(db, job_id)
    assert job["github_comment_id"] == comment_id
    assert job["github_comment_error"] is None

    rows, hrefs, html = rendered(comment["body"])
    assert html == [] or html == ["html_block"]  # only the marker, a comment GitHub hides
    header, failure, success = rows
    assert header == ["status", "source", "layer", "name", "problem", "addresses", "change", "links"]
    assert failure[:5] == ["❌ failure", broken, "addresses", "primary", "Could not download source data"]
    assert success[:7] == ["✔ success", park, "addresses", "primary", "", "1,100", "+10.0 %"]
    assert success[7] == "run · sample · log · zip · preview"
    run_id = job["file_results"][park]["entries"][0]["run_id"]
    assert f"{SITE}/runs/{run_id}/" in hrefs
    assert f"{SITE}/runs/{run_id}/sample.html" in hrefs
    assert f"{AIRFLOW}/dags/openaddr_ci/runs/ci__{job_id}/tasks/process_source/mapped/0?try_number=1" in hrefs
    assert any(href.endswith("/out.zip") for href in hrefs)
    assert any(href.endswith("/preview.png") for href in hrefs)
    assert f"{SITE}/jobs/{job_id}" in hrefs
    # The success's preview is shown as an image from the site, linking to its run page; the failure has none.
    assert images(comment["body"]) == [
        (
            f"{SITE}/runs/{run_id}/preview.png",
            f"preview of {park} addresses/primary",
            f"{SITE}/runs/{run_id}/",
        )
    ]


def test_a_second_finish_edits_the_comment(
    db: sa.Connection, fake_github: FakeGitHub, client: github.Github
) -> None:
    path = "sources/us/wy/park.json"
    job_id = make_job(db, fake_github, {path: {"count": 10}})
    first = post_job_comment(db, client, job_id, base_url=SITE)
    body = fake_github.comments[first]["body"]

    # Nothing changed: GitHub is not asked to edit.
    assert post_job_comment(db, client, job_id, base_url=SITE) == first
    assert [r.method for r in fake_github.requests if r.method == "PATCH"] == []

    # A later change (a merged run to compare with appeared) edits the same comment in place.
    merged_run(db, path, 20)
    assert post_job_comment(db, client, job_id, base_url=SITE) == first
    assert list(fake_github.comments) == [first]
    assert fake_github.comments[first]["body"] != body
    assert "-50.0 %" in fake_github.comments[first]["body"]
    assert [r.method for r in fake_github.requests].count("PATCH") == 1
    assert [r.method for r in fake_github.requests].count("POST") == 1


def test_a_deleted_comment_is_recreated_and_a_lost_id_found_by_its_marker(
    db: sa.Connection, fake_github: FakeGitHub, client: github.Github
) -> None:
    job_id = make_job(db, fake_github, {"sources/us/wy/park.json": {"count": 10}})
    first = post_job_comment(db, client, job_id, base_url=SITE)
    del fake_github.comments[first]

    second = post_job_comment(db, client, job_id, base_url=SITE)
    assert second is not None
    assert second != first
    assert list(fake_github.comments) == [second]
    assert get_job(db, job_id)["github_comment_id"] == second

    # The stored id is lost and the comment sits behind 150 others (two pages): found by its marker, not doubled.
    for _ in range(150):
        fake_github.comments[len(fake_github.comments) + 5000] = {
            **fake_github.comments[second],
            "id": len(fake_github.comments) + 5000,
            "body": "LGTM",
        }
    moved = fake_github.comments.pop(second)
    fake_github.comments[second + 10_000] = {**moved, "id": second + 10_000}
    db.execute(sa.update(jobs).where(jobs.c.id == job_id).values(github_comment_id=None))
    assert post_job_comment(db, client, job_id, base_url=SITE) == second + 10_000
    assert sum(marker(job_id) in c["body"] for c in fake_github.comments.values()) == 1
    assert [r.method for r in fake_github.requests].count("POST") == 2


HOSTILE_PATH = "sources/x|y`z`<img src=x onerror=alert(1)>\n| a | b | c | d | e | f | g | h |\\|@octocat.json"
HOSTILE_PROBLEM = (
    "</td></table><script>alert(1)</script> [click](https://evil.test) ![i](https://evil.test/i.png) $x$"
)


def test_hostile_path_and_problem_text_is_escaped(
    db: sa.Connection, fake_github: FakeGitHub, client: github.Github
) -> None:
    job_id = make_job(db, fake_github, {HOSTILE_PATH: {"problem": HOSTILE_PROBLEM}})
    comment_id = post_job_comment(db, client, job_id, base_url=SITE)
    assert comment_id is not None
    rows, hrefs, html = rendered(fake_github.comments[comment_id]["body"])
    assert html == [] or html == ["html_block"]
    header, row = rows  # no injected row
    assert len(row) == len(header) == 8
    assert row[1] == HOSTILE_PATH.replace("\n", " ").replace("@", "@\u200b")
    assert row[4] == HOSTILE_PROBLEM
    assert all(href.startswith((SITE, FILES)) for href in hrefs), hrefs


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a|b", "a\\|b"),
        ("`code`", "\\`code\\`"),
        ("<b>&amp;", "\\<b\\>\\&amp;"),
        ("one\ntwo\r\nthree", "one two three"),
        ("@org/team", "@\u200borg/team"),
        (None, ""),
    ],
)
def test_cell(text: str | None, escaped: str) -> None:
    assert cell(text) == escaped


def test_a_long_body_is_cut_and_says_how_many_rows() -> None:
    rows = [
        CommentRow(f"sources/{i:04d}/{'x' * 250}.json", "addresses", "primary", "success", None, i, None, ())
        for i in range(1000)
    ]
    body = job_comment_body({"id": "job", "status": True}, rows, base_url=SITE)
    assert len(body) <= BODY_LIMIT < 65_536
    shown = body.count("| ✔ success |")
    assert 0 < shown < 1000
    assert f"_{1000 - shown} more rows not shown" in body


def test_github_down_records_the_error_and_the_next_post_clears_it(
    db: sa.Connection, fake_github: FakeGitHub, client: github.Github
) -> None:
    job_id = make_job(db, fake_github, {"sources/us/wy/park.json": {"count": 10}})
    fake_github.fail_next(COMMENTS, status=502)
    assert post_job_comment(db, client, job_id, base_url=SITE) is None
    job = get_job(db, job_id)
    assert job["github_comment_error"].startswith("Could not post the pull-request comment: HTTP 502")
    assert job["github_comment_id"] is None
    assert fake_github.comments == {}

    comment_id = post_job_comment(db, client, job_id, base_url=SITE)
    assert comment_id is not None
    job = get_job(db, job_id)
    assert (job["github_comment_id"], job["github_comment_error"]) == (comment_id, None)


def test_unreachable_github_is_recorded(db: sa.Connection, fake_github: FakeGitHub) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job_id = make_job(db, fake_github, {"sources/us/wy/park.json": {"count": 10}})
    db.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id)
        .values(github_comments_url=f"http://127.0.0.1:{port}{COMMENTS}")
    )
    assert post_job_comment(db, fast_client(f"http://127.0.0.1:{port}"), job_id, base_url=SITE) is None
    assert "ConnectionError" in get_job(db, job_id)["github_comment_error"]
