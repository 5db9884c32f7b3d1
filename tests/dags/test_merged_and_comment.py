"""Merged work and the pull-request comment through Airflow (machine-ci.md §2.3, §2.4): the CI DAG with the real
listener records whether the job's commit is merged and posts one comment; ``openaddr_refresh_merged``'s task
rechecks the last 30 days; GitHub on loopback, the Machine database on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.db.jobs import create_job, get_job
from openaddr.db.runs import get_run, insert_run, job_runs
from openaddr.machine.comments import marker
from tests.dags.test_dag_runs import PARK, ci_conf, sources  # noqa: F401 (the sources fixture)

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from tests.airflow_fixtures import Machine
    from tests.github_server import FakeGitHub, FakeRepository

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWNER, REPO = "openaddresses", "openaddresses"
COMMIT = "c0ffee" * 6 + "abcd"  # ci_conf's commit
PULL_NUMBER = 12
COMMENTS = f"/repos/{OWNER}/{REPO}/issues/{PULL_NUMBER}/comments"


@pytest.fixture
def repository(fake_github: FakeGitHub, tmp_path: Path) -> FakeRepository:
    """openaddresses/openaddresses whose master is at the CI job's commit (a push to the default branch)."""
    folder = tmp_path / "tree"
    folder.mkdir()
    return fake_github.add_repository(OWNER, REPO, folder, COMMIT)


#: The DAG-level comment tests run on SQLite only, to keep the suite fast: posting and its row lock are tested on
#: both backends in tests/openaddr/test_comments.py.
sqlite_only = pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)


def comment_conf(job_id: str, files: dict[str, bytes], fake_github: FakeGitHub) -> dict[str, Any]:
    conf = ci_conf(job_id, files, fake_github, event="push")
    conf["github"]["comments_url"] = fake_github.url(COMMENTS)
    return conf


@sqlite_only
def test_ci_job_is_merged_and_comments_once(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],  # noqa: F811
    fake_github: FakeGitHub,
    repository: FakeRepository,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dag = machine_dags.dags["openaddr_ci"]
    job_id = str(uuid.uuid4())
    assert dag.test(run_conf=comment_conf(job_id, {PARK: sources[PARK]}, fake_github)).state == "success"

    (run,) = job_runs(machine.engine, job_id)
    assert run["is_merged"] is True  # compare master...commit: identical
    (comment,) = fake_github.comments.values()
    job = get_job(machine.engine, job_id)
    assert job["github_comment_id"] == comment["id"]
    assert job["github_comment_error"] is None
    assert comment["body"].startswith(marker(job_id))
    assert "| ✔ success | sources/us-wy-park.json | addresses | primary |" in comment["body"]
    assert f"[run](http://results.test/runs/{run['id']}/)" in comment["body"]
    # The listener saw the job finish twice (last process_source, finish_job): the second found nothing to change.
    methods = [(r.method, r.path) for r in fake_github.requests if "/issues/" in r.path]
    assert methods.count(("POST", COMMENTS)) == 1
    assert not any(method == "PATCH" for method, _ in methods)

    # Gagged: statuses and comments are not posted; the merged check (a read) still happens.
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_GAG_GITHUB_STATUS", "true")
    statuses = len(fake_github.statuses)
    gagged = str(uuid.uuid4())
    assert dag.test(run_conf=comment_conf(gagged, {PARK: sources[PARK]}, fake_github)).state == "success"
    assert len(fake_github.comments) == 1
    assert len(fake_github.statuses) == statuses
    (copy,) = job_runs(machine.engine, gagged)
    assert copy["is_merged"] is True
    assert get_job(machine.engine, gagged)["github_comment_id"] is None


@sqlite_only
def test_ci_job_finishes_when_github_refuses_the_comment(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],  # noqa: F811
    fake_github: FakeGitHub,
    repository: FakeRepository,
) -> None:
    fake_github.fail_next(COMMENTS, times=10, status=500)
    job_id = str(uuid.uuid4())
    dag_run = machine_dags.dags["openaddr_ci"].test(
        run_conf=comment_conf(job_id, {PARK: sources[PARK]}, fake_github)
    )
    assert dag_run.state == "success"
    job = get_job(machine.engine, job_id)
    assert job["status"] is True
    assert job["github_comment_error"].startswith("Could not post the pull-request comment: HTTP 500")
    assert fake_github.comments == {}
    assert fake_github.statuses[-1]["state"] == "success"


def test_refresh_merged_task_rechecks_the_last_30_days(
    machine_dags: DagBag,
    machine: Machine,
    fake_github: FakeGitHub,
    repository: FakeRepository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pull = "1" * 40
    repository.add_commit(pull, tmp_path / "tree", parent=COMMIT)
    job_id = create_job(machine.engine, task_files={"blob": PARK}, github_owner=OWNER, github_repository=REPO)
    now = dt.datetime.now(dt.UTC)
    recent, old = (
        insert_run(
            machine.engine,
            source_path=PARK,
            source_layer="addresses",
            layer_name="primary",
            job_id=job_id,
            commit_sha=pull,
            is_merged=False,
            message="Everything is fine",
            state={"address count": 1},
            now=now - dt.timedelta(days=days),
        )
        for days in (3, 40)
    )
    task = machine_dags.dags["openaddr_refresh_merged"].get_task("refresh_merged")

    # Not merged yet.
    summary = task.python_callable()
    assert (summary["commits"], summary["unmerged"], summary["runs"]) == (1, 1, 0)
    assert get_run(machine.engine, recent)["is_merged"] is False

    # The pull request is merged: the next day's recheck records it, within the 30 days only.
    repository.add_commit("2" * 40, tmp_path / "tree", branch="master", parent=pull)
    summary = task.python_callable()
    assert (summary["commits"], summary["merged"], summary["runs"]) == (1, 1, 1)
    assert get_run(machine.engine, recent)["is_merged"] is True
    assert get_run(machine.engine, old)["is_merged"] is False

    # No GitHub connection: the task fails at once, saying so (no silent fallback).
    from openaddr_airflow.config import MissingConfiguration

    monkeypatch.delenv("AIRFLOW_CONN_GITHUB_OPENADDRESSES")
    with pytest.raises(MissingConfiguration, match="github_openaddresses"):
        task.python_callable()
