"""Fixtures of the webhook tests: the app on a migrated Machine database (each backend), GitHub on loopback
(``tests/github_server.py``) with a repository of real corpus sources, and Airflow's two REST endpoints on loopback.

The Airflow stand-in (:class:`FakeAirflow`) implements what the webhook calls, shaped like Airflow 3.3.2's answers:
``POST /auth/token`` (``{"username", "password"}`` → 201 ``{"access_token"}``) and
``POST /api/v2/dags/{dag_id}/dagRuns`` (Bearer token; ``logical_date`` must be present, else 422; a taken
``dag_run_id`` 409; else 200 with the run) and ``GET …/dagRuns/{dag_run_id}``. It records every run it created.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from tests.servers import send
from tests.webhook.hooktools import (
    AIRFLOW_PASSWORD,
    AIRFLOW_USER,
    BASE_SHA,
    HEAD_SHA,
    OWNER,
    REPO,
    SECRET,
    new_ids,
)
from webhook import create_app
from webhook.db import close_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from flask import Flask
    from flask.testing import FlaskClient

    from tests.github_server import FakeGitHub, FakeRepository


class FakeAirflow:
    """Airflow's token and trigger endpoints on ``127.0.0.1``."""

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                server.handle(self, self.path, dict(self.headers.items()), body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.get(self, self.path, dict(self.headers.items()))

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.runs: dict[str, dict[str, Any]] = {}
            self.tokens: set[str] = set()
            self.logins = 0
            #: Answer the next triggers with these HTTP statuses.
            self.fail_statuses: list[int] = []

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def json(self, handler: BaseHTTPRequestHandler, data: Any, status: int) -> None:
        send(handler, json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})

    def get(self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str]) -> None:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            if token not in self.tokens:
                self.json(handler, {"detail": "Not authenticated"}, 401)
                return
            run = next(
                (run for run in self.runs.values() if path.endswith(f"/dagRuns/{run['dag_run_id']}")), None
            )
        if run is None:
            self.json(handler, {"detail": "Not Found"}, 404)
            return
        self.json(handler, run, 200)

    def handle(self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str], body: Any) -> None:
        if path == "/auth/token":
            if body != {"username": AIRFLOW_USER, "password": AIRFLOW_PASSWORD}:
                self.json(handler, {"detail": "Invalid credentials"}, 401)
                return
            token = secrets.token_hex(16)
            with self._lock:
                self.tokens.add(token)
                self.logins += 1
            self.json(handler, {"access_token": token}, 201)
            return
        prefix, suffix = "/api/v2/dags/", "/dagRuns"
        if not (path.startswith(prefix) and path.endswith(suffix)):
            self.json(handler, {"detail": "Not Found"}, 404)
            return
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            if token not in self.tokens:
                self.json(handler, {"detail": "Not authenticated"}, 401)
                return
            if self.fail_statuses:
                self.json(handler, {"detail": "Internal Server Error"}, self.fail_statuses.pop(0))
                return
            if "logical_date" not in body:
                self.json(
                    handler, {"detail": [{"loc": ["body", "logical_date"], "msg": "Field required"}]}, 422
                )
                return
            run_id = body["dag_run_id"]
            if run_id in self.runs:
                self.json(handler, {"detail": f"DAGRun with dag_run_id: '{run_id}' already exists"}, 409)
                return
            run = {"dag_id": path[len(prefix) : -len(suffix)], "dag_run_id": run_id, "conf": body["conf"]}
            self.runs[run_id] = {**run, "state": "queued", "logical_date": None}
        self.json(handler, self.runs[run_id], 200)


@pytest.fixture(scope="session")
def airflow_server() -> Iterator[FakeAirflow]:
    server = FakeAirflow()
    yield server
    server.close()


@pytest.fixture
def fake_airflow(airflow_server: FakeAirflow) -> FakeAirflow:
    airflow_server.reset()
    return airflow_server


def corpus_file(corpus_sources: Path, name: str) -> bytes:
    return (corpus_sources / name).read_bytes()


@pytest.fixture
def repository(fake_github: FakeGitHub, tmp_path: Path, corpus_sources: Path) -> FakeRepository:
    """openaddresses/openaddresses with two commits of real sources: the default branch at ``BASE_SHA``
    (``sources/xx/changed.json``, ``sources/xx/kept.json``) and ``HEAD_SHA`` on a branch, which changes one,
    adds one and a README edit."""
    base, head = tmp_path / "base", tmp_path / "head"
    for folder in (base, head):
        (folder / "sources" / "xx").mkdir(parents=True)
    shutil.copy(corpus_sources / "uy" / "countrywide.json", base / "sources/xx/changed.json")
    shutil.copy(corpus_sources / "sg" / "countrywide.json", base / "sources/xx/kept.json")
    (base / "README.md").write_text("OpenAddresses\n")
    shutil.copytree(base, head, dirs_exist_ok=True)
    shutil.copy(corpus_sources / "uy" / "mo" / "montevideo.json", head / "sources/xx/changed.json")
    shutil.copy(corpus_sources / "pl" / "mazowieckie.json", head / "sources/xx/new.json")
    (head / "README.md").write_text("OpenAddresses, the free and open global address collection\n")
    repo = fake_github.add_repository(OWNER, REPO, base, BASE_SHA)
    repo.add_commit(HEAD_SHA, head, branch="feature", parent=BASE_SHA)
    repo.pulls[7] = {"base": BASE_SHA, "head": HEAD_SHA}
    return repo


@pytest.fixture
def app(
    db_url: sa.URL, fake_github: FakeGitHub, fake_airflow: FakeAirflow, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    app = create_app(
        {
            "GITHUB_WEBHOOK_SECRETS": f"old-secret-xyz, {SECRET}",
            "DATABASE_URL": db_url.render_as_string(hide_password=False),
            "GITHUB_TOKEN": "webhook-token",
            "GITHUB_API_URL": fake_github.base_url,
            "BASE_URL": "http://results.test",
            "AIRFLOW_API_URL": fake_airflow.url,
            "AIRFLOW_USERNAME": AIRFLOW_USER,
            "AIRFLOW_PASSWORD": AIRFLOW_PASSWORD,
        }
    )
    yield app
    close_engine(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(autouse=True)
def _fresh_delivery_ids() -> None:
    """Delivery ids unique to each test: PostgreSQL's test database lives for the whole session."""
    new_ids()
