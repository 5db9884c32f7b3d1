"""Merged work (machine-ci.md §2.4): GitHub's compare decides whether a job run's commit is on the default branch,
checked for a job and rechecked for the last 30 days against the fake GitHub; only merged runs feed "latest"."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.db.jobs import create_job, create_set
from openaddr.db.results import latest_runs
from openaddr.db.runs import get_run, insert_run, unmerged_commits
from openaddr.machine.merged import MergedCheckFailed, check_job_merged, commit_merged, refresh_merged
from tests.openaddr.test_github import fast_client

if TYPE_CHECKING:
    from pathlib import Path

    import github
    import sqlalchemy as sa

    from tests.github_server import FakeGitHub, FakeRepository

OWNER, REPO = "openaddresses", "openaddresses"
# master: ROOT ← HEAD; a pull request's commit on top of HEAD; a branch that forked from ROOT.
ROOT, HEAD, PULL, FORK, MERGE = ("a" * 40, "b" * 40, "c" * 40, "d" * 40, "e" * 40)
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def repository(fake_github: FakeGitHub, tmp_path: Path) -> FakeRepository:
    folder = tmp_path / "tree"
    folder.mkdir()
    repo = fake_github.add_repository(OWNER, REPO, folder, ROOT)
    repo.add_commit(HEAD, folder, branch="master", parent=ROOT)
    repo.add_commit(PULL, folder, parent=HEAD)
    repo.add_commit(FORK, folder, parent=ROOT)
    return repo


@pytest.fixture
def client(fake_github: FakeGitHub) -> github.Github:
    return fast_client(fake_github.base_url)


def compare_path(sha: str) -> str:
    return f"/repos/{OWNER}/{REPO}/compare/master...{sha}"


def job_run(
    db: sa.Connection,
    commit: str | None,
    *,
    path: str | None = None,
    owner: str | None = OWNER,
    job_id: str | None = None,
    when: dt.datetime = NOW,
    count: int = 100,
    status: bool = True,
) -> dict[str, Any]:
    """A finished run of a (new) job at ``commit``."""
    if job_id is None:
        job_id = create_job(
            db,
            task_files={"blob": path or "sources/x.json"},
            github_owner=owner,
            github_repository=REPO if owner else None,
        )
    run_id = insert_run(
        db,
        source_path=path or f"sources/{uuid.uuid4().hex}.json",
        source_layer="addresses",
        layer_name="primary",
        job_id=job_id,
        commit_sha=commit,
        state={"address count": count, "processed": "x.zip", "sample": "s.json", "cache": "c.zip"},
        message="Everything is fine" if status else "Failed to produce processed data",
        started=when,
        now=when,
    )
    run = get_run(db, run_id)
    assert run is not None
    return run


@pytest.mark.parametrize(
    ("sha", "merged"), [(HEAD, True), (ROOT, True), (PULL, False), (FORK, False)], ids=str
)
def test_compare_status_decides(
    repository: FakeRepository, client: github.Github, fake_github: FakeGitHub, sha: str, merged: bool
) -> None:
    assert commit_merged(client, OWNER, REPO, sha) is merged
    assert fake_github.hits[compare_path(sha)] == 1


@pytest.mark.parametrize("failure", [500, 404])
def test_github_failure_is_unknown_never_a_guess(
    repository: FakeRepository, client: github.Github, fake_github: FakeGitHub, failure: int
) -> None:
    fake_github.fail_next(compare_path(PULL), status=failure)
    assert commit_merged(client, OWNER, REPO, PULL) is None


def test_a_push_to_the_default_branch_is_merged_at_once(
    db: sa.Connection, repository: FakeRepository, client: github.Github
) -> None:
    run = job_run(db, HEAD)
    assert run["is_merged"] is None
    assert check_job_merged(db, client, run["job_id"]) is True
    assert get_run(db, run["id"])["is_merged"] is True
    # Checked once: nothing unknown is left, so GitHub is not asked again.
    assert unmerged_commits(db, job_id=run["job_id"], only_unknown=True) == []


def test_a_pull_request_is_not_merged_until_it_is(
    db: sa.Connection,
    repository: FakeRepository,
    client: github.Github,
    fake_github: FakeGitHub,
    tmp_path: Path,
) -> None:
    run = job_run(db, PULL, when=NOW - dt.timedelta(days=2))
    assert check_job_merged(db, client, run["job_id"]) is False
    assert get_run(db, run["id"])["is_merged"] is False

    # Merged after its check: the daily recheck notices.
    repository.add_commit(MERGE, tmp_path / "tree", branch="master", parent=PULL)
    summary = refresh_merged(db, client, now=NOW)
    assert (summary.commits, summary.merged, summary.unmerged, summary.unknown) == (1, 1, 0, 0)
    assert get_run(db, run["id"])["is_merged"] is True


def test_recheck_asks_once_per_commit_within_30_days(
    db: sa.Connection, repository: FakeRepository, client: github.Github, fake_github: FakeGitHub
) -> None:
    pulls = [job_run(db, PULL, when=NOW - dt.timedelta(days=d)) for d in (1, 5, 29)]
    # A second run of the same job and commit: still one compare.
    pulls.append(job_run(db, PULL, job_id=pulls[0]["job_id"], when=NOW - dt.timedelta(days=1)))
    fork = job_run(db, FORK, when=NOW - dt.timedelta(days=3))
    old = job_run(db, PULL, when=NOW - dt.timedelta(days=31))
    manual = job_run(db, HEAD, owner=None)
    no_commit = job_run(db, None)
    set_id = create_set(db, owner=OWNER, repository=REPO, commit_sha=HEAD)
    set_run = insert_run(
        db, source_path="sources/s.json", source_layer="addresses", layer_name="primary", set_id=set_id
    )

    summary = refresh_merged(db, client, now=NOW)
    assert (summary.commits, summary.merged, summary.unmerged, summary.unknown) == (2, 0, 2, 0)
    assert summary.runs == 5
    assert fake_github.hits[compare_path(PULL)] == 1
    assert fake_github.hits[compare_path(FORK)] == 1
    assert fake_github.hits[f"/repos/{OWNER}/{REPO}"] == 1  # the default branch, once per repository
    assert {get_run(db, run["id"])["is_merged"] for run in [*pulls, fork]} == {False}
    # Out of the window, a manual trigger without a repository, a run without commit: never asked.
    assert get_run(db, old["id"])["is_merged"] is None
    assert get_run(db, manual["id"])["is_merged"] is None
    assert get_run(db, no_commit["id"])["is_merged"] is None
    assert get_run(db, set_run)["is_merged"] is True


def test_recheck_keeps_what_github_could_not_answer(
    db: sa.Connection, repository: FakeRepository, client: github.Github, fake_github: FakeGitHub
) -> None:
    pull = job_run(db, PULL)
    fork = job_run(db, FORK)
    fake_github.fail_next(compare_path(FORK), status=502)
    summary = refresh_merged(db, client, now=NOW)
    assert (summary.unmerged, summary.unknown) == (1, 1)
    assert get_run(db, pull["id"])["is_merged"] is False
    assert get_run(db, fork["id"])["is_merged"] is None

    # GitHub down altogether: the task fails (to be retried) and nothing changes.
    fake_github.fail_next(f"/repos/{OWNER}/{REPO}", times=5, status=503)
    with pytest.raises(MergedCheckFailed, match="GitHub answered none of the 2 compares"):
        refresh_merged(db, client, now=NOW)
    assert get_run(db, fork["id"])["is_merged"] is None
    assert get_run(db, pull["id"])["is_merged"] is False


def latest(db: sa.Connection, path: str, **options: Any) -> int:
    """The id of the latest run of ``path``'s one entry on the results site."""
    (run,) = latest_runs(db, source_path=path, **options)
    return int(run["id"])


def test_only_merged_runs_feed_latest(
    db: sa.Connection, repository: FakeRepository, client: github.Github, tmp_path: Path
) -> None:
    path = f"sources/{uuid.uuid4().hex}.json"
    set_id = create_set(db, owner=OWNER, repository=REPO, commit_sha=HEAD)
    from_set = insert_run(
        db,
        source_path=path,
        source_layer="addresses",
        layer_name="primary",
        set_id=set_id,
        state={"address count": 10, "processed": "x.zip", "sample": "s.json", "cache": "c.zip"},
        now=NOW - dt.timedelta(days=3),
    )
    assert latest(db, path) == from_set

    # A newer run of a pull request: unknown, then checked and not merged — latest does not move.
    pull = job_run(db, PULL, path=path, when=NOW - dt.timedelta(days=1))
    assert latest(db, path) == from_set
    assert check_job_merged(db, client, pull["job_id"]) is False
    assert latest(db, path) == from_set

    # A push to the default branch is merged at once and becomes latest; a job leaves itself out when it compares.
    push = job_run(db, HEAD, path=path, when=NOW - dt.timedelta(days=2), count=12)
    assert check_job_merged(db, client, push["job_id"]) is True
    assert latest(db, path) == push["id"]
    assert latest(db, path, successful=True, exclude_job_id=push["job_id"]) == from_set

    # The pull request is merged: the recheck makes its (newer) run latest.
    repository.add_commit(MERGE, tmp_path / "tree", branch="master", parent=PULL)
    refresh_merged(db, client, now=NOW)
    assert latest(db, path) == pull["id"]
