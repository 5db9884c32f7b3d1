"""Where the tasks find the Machine database and storage: the ``openaddr_machine_db`` connection, extras included;
no silent local fallback outside the embedded mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.db import make_engine, upgrade
from openaddr.db.schema import jobs, runs
from openaddr.machine import PlannedEntry, RunOwner
from openaddr_airflow import config
from tests.conftest import ROOT

if TYPE_CHECKING:
    from tests.github_server import FakeGitHub


def test_postgres_connection_keeps_libpq_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "port": 5432,
                "login": "machine",
                "password": "s3cret",
                "schema": "openaddr",
                "extra": {"sslmode": "require", "cursor": "dictcursor"},
            }
        ),
    )
    url = sa.make_url(config.machine_database_url())
    assert (url.host, url.database, url.username, url.password) == (
        "db.internal",
        "openaddr",
        "machine",
        "s3cret",
    )
    assert dict(url.query) == {"sslmode": "require"}


def test_sqlite_connection_names_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = tmp_path / "machine.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    assert config.machine_database_url() == f"sqlite:///{path}"


@pytest.fixture(scope="module")
def unconfigured_dag(airflow_metadata: None) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "tests" / "dags" / "listener_dags.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["machine_unconfigured"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("AIRFLOW_CONN_OPENADDR_MACHINE_DB", "OPENADDR_DATABASE_URL"), "connection openaddr_machine_db"),
        (("AIRFLOW_VAR_OPENADDR_RESULTS", "OPENADDR_RESULTS"), "variable openaddr_results"),
    ],
)
def test_worker_without_its_configuration_fails_the_task_and_writes_nothing(
    unconfigured_dag: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    missing: tuple[str, ...],
    named: str,
) -> None:
    home, storage, database = tmp_path / "home", tmp_path / "storage", tmp_path / "db" / "machine.db"
    upgrade(f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENADDR_HOME", str(home))
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS", str(storage))
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    monkeypatch.setenv("OPENADDR_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.delenv(config.EMBEDDED_VARIABLE, raising=False)
    for name in missing:
        monkeypatch.delenv(name, raising=False)
    entry = PlannedEntry(
        path="sources/us-wy-park.json",
        layer="addresses",
        name="primary",
        source_key="jobs/unconfigured/sources/us-wy-park.json",
        blob_sha=None,
        digest="0" * 40,
        timeout=60.0,
    )
    owner = RunOwner("ci", job_id="unconfigured")

    dag_run = unconfigured_dag.test(run_conf={"entry": entry.to_dict(), "run_owner": vars(owner)})

    (ti,) = dag_run.get_task_instances()
    assert (dag_run.state, ti.state, ti.try_number) == ("failed", "failed", 1)  # no retry
    assert (
        f"The {'Machine database' if 'conn' in named else 'run storage'} is not configured: {named}"
        in caplog.text
    )
    # Nothing written: no local database, no storage, no run in the configured database.
    assert not storage.exists()
    assert not home.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db"]
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
            assert connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.integration
def test_worker_with_a_malformed_setting_fails_the_task_naming_it(
    unconfigured_dag: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage, database = tmp_path / "storage", tmp_path / "db" / "machine.db"
    upgrade(f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS", str(storage))
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    monkeypatch.setenv("OPENADDR_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("OPENADDR_READ_TIMEOUT", "abc")
    entry = PlannedEntry(
        path="sources/us-wy-park.json",
        layer="addresses",
        name="primary",
        source_key="jobs/unconfigured/sources/us-wy-park.json",
        blob_sha=None,
        digest="0" * 40,
        timeout=60.0,
    )
    owner = RunOwner("ci", job_id="unconfigured")

    dag_run = unconfigured_dag.test(run_conf={"entry": entry.to_dict(), "run_owner": vars(owner)})

    (ti,) = dag_run.get_task_instances()
    assert (dag_run.state, ti.state, ti.try_number) == ("failed", "failed", 1)  # no retry
    assert "Invalid setting: OPENADDR_READ_TIMEOUT='abc': could not convert string to float" in caplog.text
    assert not storage.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db"]
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 0
    finally:
        engine.dispose()


def test_settings_of_a_task_name_a_malformed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENADDR_EMBEDDED", "perhaps")
    with pytest.raises(config.InvalidConfiguration, match="^Invalid setting: OPENADDR_EMBEDDED='perhaps': "):
        config.embedded()
    monkeypatch.setenv("OPENADDR_EMBEDDED", "1")
    monkeypatch.setenv("OPENADDR_SCRATCH", "/srv/scratch")
    assert config.embedded()
    assert config.settings().scratch == Path("/srv/scratch")


def _post(client: Any, fake_github: FakeGitHub, description: str) -> bool:
    from openaddr.github import CommitStatus, post_commit_status

    status = CommitStatus("success", description, None)
    url = fake_github.status_url("openaddresses", "openaddresses", "c0ffee" * 6 + "abcd")
    return post_commit_status(client, url, status, sleep=lambda seconds: None)


def test_github_token_connection_goes_through_the_github_hook(
    monkeypatch: pytest.MonkeyPatch, fake_github: FakeGitHub
) -> None:
    from airflow.providers.github.hooks.github import GithubHook

    hooks: list[str] = []
    original = GithubHook.get_conn

    def spy(self: GithubHook) -> Any:
        hooks.append(self.github_conn_id)
        return original(self)

    monkeypatch.setattr(GithubHook, "get_conn", spy)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GITHUB_OPENADDRESSES",
        json.dumps({"conn_type": "github", "host": fake_github.base_url, "password": "ci-token"}),
    )
    client = config.github_client()
    assert set(hooks) == {config.GITHUB_CONN_ID}  # GithubHook.__init__ calls get_conn too
    # The Machine's policy: PyGithub's own retries off, its timeout and user agent.
    assert client.requester.kwargs["retry"] is None
    assert client.requester.kwargs["timeout"] == config.GITHUB_TIMEOUT
    assert _post(client, fake_github, "Succeeded on sources/a.json")
    (posted,) = fake_github.statuses
    assert posted["authorization"] == "token ci-token"
    assert fake_github.requests[-1].headers["User-Agent"].startswith("openaddr-machine/")
    # A server error is retried by post_commit_status alone: 2 failures, then success, 3 requests.
    fake_github.fail_next(fake_github.requests[-1].path, times=2)
    before = len(fake_github.requests)
    assert _post(client, fake_github, "again")
    assert len(fake_github.requests) - before == 3


def test_github_app_connection_gets_an_installation_token(
    monkeypatch: pytest.MonkeyPatch, fake_github: FakeGitHub
) -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    monkeypatch.setenv(
        "AIRFLOW_CONN_GITHUB_OPENADDRESSES",
        json.dumps(
            {
                "conn_type": "github",
                "host": fake_github.base_url,
                "extra": {"app_id": "4242", "installation_id": 77, "private_key": pem},
            }
        ),
    )
    assert _post(config.github_client(), fake_github, "Succeeded on sources/a.json")
    (posted,) = fake_github.statuses
    assert posted["authorization"] == "token ghs_fake_77"
    (exchange,) = [r for r in fake_github.requests if r.path == "/app/installations/77/access_tokens"]
    claims = jwt.decode(
        exchange.headers["Authorization"].removeprefix("Bearer "), key.public_key(), algorithms=["RS256"]
    )
    assert claims["iss"] == "4242"


def test_github_client_is_none_without_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GITHUB_OPENADDRESSES", raising=False)
    assert config.github_client() is None


def test_machine_engine_is_disposed_when_its_block_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "machine.db"
    upgrade(f"sqlite:///{database}")
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPENADDR_MACHINE_DB", json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    with config.machine_engine() as engine:
        with engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 0
        assert engine.pool.checkedin() == 1
    assert engine.pool.checkedin() == 0  # disposed: no pooled connection left open
    with config.machine_engine() as again:
        assert again is not engine
    assert not hasattr(config, "_ENGINES")
