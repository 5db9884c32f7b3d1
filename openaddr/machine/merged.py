"""Merged work (machine-ci.md §2.4): is a job run's commit on its repository's default branch?

Runs of sets count as merged (:func:`openaddr.db.runs.insert_run` records them so). A CI job's runs are checked when
the job's runs are all recorded (:func:`check_job_merged`, from the run listener) and rechecked daily for the last
30 days (:func:`refresh_merged`, the ``openaddr_refresh_merged`` DAG), one compare per distinct (owner, repository,
commit): GitHub's compare ``<default branch>...<commit>`` answers ``identical`` (a push to the default branch) or
``behind`` (the commit is an ancestor of the branch's head: merged), ``ahead`` or ``diverged`` (not merged). When
GitHub cannot answer, ``is_merged`` stays as it is and the failure is logged: the Machine never guesses. Only merged
runs feed "latest" (:func:`openaddr.db.results.latest_runs`).

The client is PyGithub's :class:`github.Github`, the object the GitHub provider's ``GithubHook`` hands out.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import requests
from github import GithubException

from openaddr.db import runs as db_runs

if TYPE_CHECKING:
    import datetime as dt

    import github

log = logging.getLogger(__name__)

#: Compare statuses of ``<default branch>...<commit>`` that mean the commit is on the default branch.
MERGED_STATUSES = frozenset({"identical", "behind"})
#: Compare statuses that mean it is not (yet).
UNMERGED_STATUSES = frozenset({"ahead", "diverged"})

#: What a GitHub request may raise besides :class:`~github.GithubException`: connection errors and timeouts.
_NETWORK_ERRORS = (requests.RequestException, OSError)


class MergedCheckFailed(RuntimeError):
    """GitHub answered none of the compares of a recheck: nothing was learnt, the task should be retried."""


def default_branch(client: github.Github, owner: str, repository: str) -> str | None:
    """The default branch of ``owner/repository``, or None (logged) when GitHub cannot say."""
    try:
        return str(client.get_repo(f"{owner}/{repository}").default_branch)
    except (GithubException, *_NETWORK_ERRORS) as exc:
        log.warning("Cannot read the default branch of %s/%s: %s", owner, repository, _describe(exc))
        return None


def commit_merged(
    client: github.Github, owner: str, repository: str, commit_sha: str, *, branch: str | None = None
) -> bool | None:
    """Whether ``commit_sha`` is reachable from the default branch of ``owner/repository``.

    :param branch: the default branch when already known (default: asked of GitHub)
    :return: True (compare status ``behind`` or ``identical``), False (``ahead`` or ``diverged``), or None when
        GitHub failed or answered something else (logged; never a guess)
    """
    branch = branch or default_branch(client, owner, repository)
    if branch is None:
        return None
    try:
        # The compare endpoint PyGithub's Repository.compare calls, without fetching the repository again.
        path = "/repos/{}/{}/compare/{}...{}".format(
            *(urllib.parse.quote(part, safe="") for part in (owner, repository, branch, commit_sha))
        )
        _, answer = client.requester.requestJsonAndCheck("GET", path)
        status = answer.get("status") if isinstance(answer, dict) else None
    except (GithubException, *_NETWORK_ERRORS) as exc:
        log.warning(
            "Cannot compare %s...%s in %s/%s: %s", branch, commit_sha, owner, repository, _describe(exc)
        )
        return None
    if status in MERGED_STATUSES:
        return True
    if status in UNMERGED_STATUSES:
        return False
    log.warning("Compare %s...%s in %s/%s answered status %r", branch, commit_sha, owner, repository, status)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GithubException):
        return f"HTTP {exc.status} {exc.data}"
    return f"{type(exc).__name__}: {exc}"


def check_job_merged(engine: db_runs.Bind, client: github.Github, job_id: str) -> bool | None:
    """Check the commit of a job's runs that were never checked (``is_merged`` null) and record the answer.

    Called when the job's runs are recorded; runs of a job whose owner, repository or commit is unknown (a manual
    trigger) are left unknown.

    :return: the answer for the job's commit (the last one, should the runs name several), None when there was
        nothing to check or GitHub could not answer
    """
    answer: bool | None = None
    for commit in db_runs.unmerged_commits(engine, job_id=job_id, only_unknown=True):
        answer = commit_merged(client, commit.owner, commit.repository, commit.commit_sha)
        if answer is not None:
            db_runs.set_commit_merged(engine, commit, answer, job_id=job_id)
    return answer


@dataclass
class RefreshSummary:
    """What a recheck did (:func:`refresh_merged`).

    :param commits: distinct (owner, repository, commit) checked
    :param merged: of them, on the default branch
    :param unmerged: not on it
    :param unknown: GitHub could not say
    :param runs: runs whose ``is_merged`` changed
    """

    commits: int = 0
    merged: int = 0
    unmerged: int = 0
    unknown: int = 0
    runs: int = 0
    failed: list[str] = field(default_factory=list)


def refresh_merged(
    engine: db_runs.Bind,
    client: github.Github,
    *,
    now: dt.datetime | None = None,
    window: dt.timedelta = db_runs.MERGED_RECHECK_WINDOW,
) -> RefreshSummary:
    """Recheck the job runs of the last ``window`` (30 days) whose ``is_merged`` is not true: one compare per
    distinct (owner, repository, commit), the default branch asked once per repository (§2.4, the daily
    ``openaddr_refresh_merged``).

    :param now: the end of the window (default: now)
    :return: the counts
    :raises MergedCheckFailed: there were commits to check and GitHub answered none of them (nothing changed)
    """
    since = (now or db_runs.utcnow()) - window
    summary = RefreshSummary()
    branches: dict[tuple[str, str], str | None] = {}
    for commit in db_runs.unmerged_commits(engine, since=since):
        summary.commits += 1
        key = (commit.owner, commit.repository)
        if key not in branches:
            branches[key] = default_branch(client, *key)
        branch = branches[key]
        answer = (
            commit_merged(client, commit.owner, commit.repository, commit.commit_sha, branch=branch)
            if branch is not None
            else None
        )
        if answer is None:
            summary.unknown += 1
            summary.failed.append(f"{commit.owner}/{commit.repository}@{commit.commit_sha}")
            continue
        if answer:
            summary.merged += 1
        else:
            summary.unmerged += 1
        summary.runs += db_runs.set_commit_merged(engine, commit, answer, since=since)
    log.info(
        "Rechecked %d commits since %s: %d merged, %d not, %d unknown; %d runs updated",
        summary.commits,
        since.isoformat(),
        summary.merged,
        summary.unmerged,
        summary.unknown,
        summary.runs,
    )
    if summary.commits and summary.unknown == summary.commits:
        raise MergedCheckFailed(
            f"GitHub answered none of the {summary.commits} compares (first: {summary.failed[0]}); see the log"
        )
    return summary
