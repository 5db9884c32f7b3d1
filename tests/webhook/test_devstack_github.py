"""The fake GitHub of ``make run`` (``devstack/github.py``) and the push ``make push`` sends, through the real app."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from devstack import ROOT
from devstack.demo import DEMO
from devstack.github import (
    MAINTAINER,
    OUTSIDER,
    OWNER,
    REPO,
    DemoGitHub,
    add_demo_repository,
    commit_sha,
    github_env,
)
from devstack.procs import free_port
from devstack.push import changed_source, push_payload, sign
from tests.webhook.hooktools import AIRFLOW_PASSWORD, AIRFLOW_USER, SECRET
from webhook import create_app
from webhook.db import close_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa

    from devstack.fake_airflow import FakeAirflow

PORTLAND = "sources/us/or/portland.json"


@pytest.fixture
def demo_github(tmp_path: Path) -> Iterator[DemoGitHub]:
    server = DemoGitHub(tmp_path / "github")
    add_demo_repository(server, DEMO)
    yield server
    server.close()


def _commit(github: DemoGitHub, files: dict[str, str | None]) -> requests.Response:
    return requests.post(
        f"{github.base_url}/_admin/repos/{OWNER}/{REPO}/commits",
        json={"files": files, "message": "Change"},
        timeout=10,
    )


def test_the_demo_repository_holds_the_demo_sources_at_a_stable_sha(demo_github: DemoGitHub, tmp_path: Path):
    repository = demo_github.repositories[(OWNER, REPO)]
    files = repository.files(repository.branches["master"])
    expected = sorted(p.relative_to(DEMO).as_posix() for p in (DEMO / "sources").rglob("*.json"))
    assert sorted(files) == expected
    assert repository.branches["master"] == commit_sha(None, files)
    again = DemoGitHub(tmp_path / "again")
    try:
        assert add_demo_repository(again, DEMO).branches["master"] == repository.branches["master"]
    finally:
        again.close()


def test_an_admin_commit_moves_the_branch_and_compare_shows_the_change(demo_github: DemoGitHub):
    before = demo_github.repositories[(OWNER, REPO)].branches["master"]
    text = (DEMO / PORTLAND).read_text()
    made = _commit(
        demo_github, {PORTLAND: changed_source(text, "a new note"), "sources/us/wy/park.json": None}
    )
    assert made.status_code == 201, made.text
    commit = made.json()
    assert commit["parent"] == before
    assert (commit["modified"], commit["removed"], commit["added"]) == (
        [PORTLAND],
        ["sources/us/wy/park.json"],
        [],
    )
    api = f"{demo_github.base_url}/repos/{OWNER}/{REPO}"
    assert requests.get(f"{api}/branches/master", timeout=10).json()["commit"]["sha"] == commit["sha"]
    compare = requests.get(f"{api}/compare/{before}...{commit['sha']}", timeout=10).json()
    assert {(f["filename"], f["status"]) for f in compare["files"]} == {
        (PORTLAND, "modified"),
        ("sources/us/wy/park.json", "removed"),
    }
    content = requests.get(f"{api}/contents/{PORTLAND}", params={"ref": commit["sha"]}, timeout=10).json()
    source = json.loads(base64.b64decode(content["content"]))
    assert source["layers"]["addresses"][0]["note"] == "a new note"
    assert (
        source["layers"]["addresses"][0]["conform"] == json.loads(text)["layers"]["addresses"][0]["conform"]
    )


@pytest.mark.parametrize("body", [{}, {"files": {}}, {"files": ["x"]}, {"files": {"a.json": 3}}])
def test_a_malformed_admin_commit_is_400(demo_github: DemoGitHub, body: dict):
    answer = requests.post(
        f"{demo_github.base_url}/_admin/repos/{OWNER}/{REPO}/commits", json=body, timeout=10
    )
    assert answer.status_code == 400
    assert (
        requests.post(f"{demo_github.base_url}/_admin/repos/x/y/commits", json=body, timeout=10).status_code
        == 404
    )


def test_the_push_make_push_sends_makes_a_job_a_dag_run_and_a_pending_status(
    demo_github: DemoGitHub, fake_airflow: FakeAirflow, db_url: sa.URL
):
    """The payload of ``python -m devstack push``, signed as it signs it, through the real app: one job with the
    changed source, the ``openaddr_ci`` run carrying its content, the *pending* status at the fake GitHub."""
    text = changed_source((DEMO / PORTLAND).read_text(), "changed by the test")
    commit = _commit(demo_github, {PORTLAND: text}).json()
    repository = requests.get(f"{demo_github.base_url}/repos/{OWNER}/{REPO}", timeout=10).json()
    body = json.dumps(push_payload(repository, commit, "master")).encode()
    app = create_app(
        {
            "GITHUB_WEBHOOK_SECRETS": SECRET,
            "DATABASE_URL": db_url.render_as_string(hide_password=False),
            "GITHUB_TOKEN": "devstack-token",
            "GITHUB_API_URL": demo_github.base_url,
            "BASE_URL": "http://results.test",
            "AIRFLOW_API_URL": fake_airflow.url,
            "AIRFLOW_USERNAME": AIRFLOW_USER,
            "AIRFLOW_PASSWORD": AIRFLOW_PASSWORD,
        }
    )
    try:
        headers = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": f"devstack-{commit['sha']}",
            "X-Hub-Signature-256": sign(body, SECRET),
            "Content-Type": "application/json",
        }
        answer = app.test_client().post("/hook", data=body, headers=headers)
    finally:
        close_engine(app)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    job_id = answer.json["id"]
    run = fake_airflow.runs[f"ci__{job_id}"]
    assert run["conf"]["commit_sha"] == commit["sha"]
    assert [(s["path"], base64.b64decode(s["content_b64"]).decode()) for s in run["conf"]["sources"]] == [
        (PORTLAND, text)
    ]
    statuses = requests.get(
        f"{demo_github.base_url}/_admin/statuses", params={"sha": commit["sha"]}, timeout=10
    )
    assert [(s["state"], s["target_url"]) for s in statuses.json()] == [
        ("pending", f"http://results.test/jobs/{job_id}")
    ]


def test_the_program_serves_the_demo_repository_until_sigterm(tmp_path: Path, sqlite_template: Path):
    port = free_port()
    command = [sys.executable, "-m", "devstack.github", "--port", str(port), "--sources", str(DEMO)]
    process = subprocess.Popen([*command, "--state", str(tmp_path / "github")], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/repos/{OWNER}/{REPO}", timeout=5)
                break
            except requests.ConnectionError:
                assert process.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert answer.json()["default_branch"] == "master"
        assert (
            answer.json()["statuses_url"] == f"http://127.0.0.1:{port}/repos/{OWNER}/{REPO}/statuses/{{sha}}"
        )
        # The review queue's sign-in as make run configures it: the maintainer gets in, the outsider does not.
        database = tmp_path / "machine.db"
        shutil.copyfile(sqlite_template, database)
        settings = {key.removeprefix("OA_WEBHOOK_"): value for key, value in github_env(port).items()}
        app = create_app(
            {
                **settings,
                "TESTING": True,
                "DATABASE_URL": f"sqlite:///{database}",
                "SECRET_KEY": "devstack test",
                "SESSION_COOKIE_SECURE": False,
            }
        )
        try:
            for login, status in ((OUTSIDER, 403), (MAINTAINER, 303)):
                client = app.test_client()
                start = urlsplit(client.get("/auth/login").headers["Location"])
                query = dict(parse_qsl(start.query))
                form = {**{key: query[key] for key in ("client_id", "redirect_uri", "state")}, "login": login}
                back = requests.post(
                    f"http://127.0.0.1:{port}/login/oauth/authorize",
                    data=form,
                    allow_redirects=False,
                    timeout=10,
                )
                callback = urlsplit(back.headers["Location"])
                assert client.get(f"{callback.path}?{callback.query}").status_code == status, login
            assert "Signed in as <strong>maintainer</strong>" in client.get("/review/").get_data(as_text=True)
        finally:
            close_engine(app)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
