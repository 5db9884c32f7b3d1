"""The webhook against a real Airflow 3.3 api-server (one per module, ~40 s to start on 2 cores).

The fixture migrates a throwaway SQLite metadata database, serializes the project's DAGs (``airflow dags
reserialize``, so no dag-processor is needed) and starts ``airflow api-server`` alone on a free loopback port with
a SimpleAuthManager user ``ci_webhook`` of role ``user`` (the least that may trigger, as under ``make run``). Without a scheduler the triggered runs stay queued: the tests
read them back through the REST API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from devstack.procs import free_port
from tests.conftest import ROOT
from tests.webhook.hooktools import HEAD_SHA, deliver, load_payload
from webhook import create_app
from webhook.db import close_engine

if TYPE_CHECKING:
    from collections.abc import Iterator

    import sqlalchemy as sa

    from tests.github_server import FakeGitHub, FakeRepository

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "ci_webhook"
START_TIMEOUT = 180.0


class RealAirflow:
    """A running api-server: its URL and the generated password of ``ci_webhook``."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home

    @property
    def password(self) -> str:
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        return str(json.loads(generated.read_text())[USER])

    def get(self, path: str) -> dict[str, Any]:
        token = requests.post(
            f"{self.url}/auth/token", json={"username": USER, "password": self.password}, timeout=30
        ).json()["access_token"]
        response = requests.get(
            f"{self.url}/api/v2{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
def real_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAirflow]:
    home = tmp_path_factory.mktemp("airflow-api")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "OPENADDR"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:user",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    log = (home / "airflow-test.log").open("wb")
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([airflow, *command], env=env, stdout=log, stderr=log, check=True, timeout=300)
    server = subprocess.Popen(
        [airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                pytest.fail(f"airflow api-server exited with {server.returncode}; see {log.name}")
            try:
                if requests.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > START_TIMEOUT:
                pytest.fail(f"airflow api-server not up after {START_TIMEOUT:.0f} s; see {log.name}")
            time.sleep(1)
        yield RealAirflow(url, home)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()


@pytest.fixture
def real_app(db_url: sa.URL, fake_github: FakeGitHub, real_airflow: RealAirflow) -> Iterator[Any]:
    app = create_app(
        {
            "GITHUB_WEBHOOK_SECRETS": "It's a Secret to Everybody",
            "DATABASE_URL": db_url.render_as_string(hide_password=False),
            "GITHUB_TOKEN": "webhook-token",
            "GITHUB_API_URL": fake_github.base_url,
            "BASE_URL": "http://results.test",
            "AIRFLOW_API_URL": real_airflow.url,
            "AIRFLOW_USERNAME": USER,
            "AIRFLOW_PASSWORD": real_airflow.password,
            # The api-server's first answers can take seconds on a busy 2-core machine.
            "AIRFLOW_TIMEOUT": 30.0,
        }
    )
    yield app
    close_engine(app)


def test_push_triggers_a_real_dag_run(
    real_app: Any, real_airflow: RealAirflow, fake_github: FakeGitHub, repository: FakeRepository
) -> None:
    response = deliver(real_app.test_client(), "push", load_payload("push", fake_github), "real-push")
    assert response.status_code == 200, response.get_json()
    job_id = response.get_json()["id"]
    run = real_airflow.get(f"/dags/openaddr_ci/dagRuns/ci__{job_id}")
    assert run["state"] == "queued"
    assert run["triggered_by"] == "rest_api"
    assert run["triggering_user_name"] == USER
    conf = run["conf"]
    assert conf["job_id"] == job_id
    assert conf["commit_sha"] == HEAD_SHA
    assert sorted(source["path"] for source in conf["sources"]) == [
        "sources/xx/changed.json",
        "sources/xx/new.json",
    ]
    assert [status["state"] for status in fake_github.statuses] == ["pending"]
    again = deliver(real_app.test_client(), "push", load_payload("push", fake_github), "real-push")
    assert again.get_json() == response.get_json()


def test_refused_login_records_nothing(
    real_app: Any, real_airflow: RealAirflow, fake_github: FakeGitHub, repository: FakeRepository
) -> None:
    real_app.config["AIRFLOW_PASSWORD"] = "not-the-password"
    response = deliver(real_app.test_client(), "push", load_payload("push", fake_github), "real-refused")
    assert response.status_code == 500
    assert response.get_json()["error"] == f"Airflow refused the login of {USER}: HTTP 401"
    assert [status["state"] for status in fake_github.statuses] == ["error"]
    runs = real_airflow.get("/dags/openaddr_ci/dagRuns")["dag_runs"]
    assert all(run["conf"].get("delivery_id", "").startswith("real-push") for run in runs)
