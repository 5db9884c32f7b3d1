"""The application factory and its configuration sources."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from tests.conftest import ROOT
from webhook import ConfigurationError, create_app
from webhook.db import close_engine, get_db


def test_refuses_to_start_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRETS", raising=False)
    monkeypatch.delenv("OA_WEBHOOK_TESTING", raising=False)
    with pytest.raises(ConfigurationError, match="GITHUB_WEBHOOK_SECRETS"):
        create_app()
    with pytest.raises(ConfigurationError):
        create_app({"GITHUB_WEBHOOK_SECRETS": " , "})


def test_testing_starts_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_WEBHOOK_SECRETS", raising=False)
    monkeypatch.setenv("OA_WEBHOOK_TESTING", "true")
    app = create_app()
    assert app.testing
    assert app.config["GITHUB_WEBHOOK_SECRETS"] == []


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRETS", "one, two ,,three")
    monkeypatch.setenv("OPENADDR_DATABASE_URL", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("OA_WEBHOOK_GITHUB_TOKEN", "tok")
    monkeypatch.setenv("OA_WEBHOOK_REJECT_NEW_JOBS", "yes")
    monkeypatch.setenv("OA_WEBHOOK_GAG_GITHUB_STATUS", "false")
    monkeypatch.setenv("OA_WEBHOOK_BASE_URL", "https://results.example/")
    app = create_app()
    assert app.config["GITHUB_WEBHOOK_SECRETS"] == ["one", "two", "three"]
    assert app.config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'm.db'}"
    assert app.config["GITHUB_TOKEN"] == "tok"
    assert app.config["REJECT_NEW_JOBS"] is True
    assert app.config["GAG_GITHUB_STATUS"] is False
    assert app.config["BASE_URL"] == "https://results.example"
    assert not app.testing
    # test_config wins over the environment.
    assert create_app({"REJECT_NEW_JOBS": "no"}).config["REJECT_NEW_JOBS"] is False


def test_one_connection_per_request_engine_per_app(tmp_path) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"})
    with app.app_context():
        first = get_db()
        assert get_db() is first
    assert first.closed
    with app.app_context():
        assert get_db() is not first
    assert "openaddr_db" in app.extensions
    close_engine(app)
    assert "openaddr_db" not in app.extensions


def test_only_post_hook() -> None:
    client = create_app({"TESTING": True}).test_client()
    assert client.get("/hook").status_code == 405


def test_flask_cli_finds_the_app(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GITHUB_WEBHOOK_SECRETS": "s3cret", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webhook", "routes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "/hook" in result.stdout
    assert "POST" in result.stdout


def test_gunicorn_serves_the_app(tmp_path) -> None:
    import hashlib
    import hmac
    import time
    from pathlib import Path

    import requests

    from devstack.procs import free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "GITHUB_WEBHOOK_SECRETS": "s3cret-key", "HOME": str(tmp_path)}
    env["OPENADDR_DATABASE_URL"] = f"sqlite:///{tmp_path / 'machine.db'}"
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    CONFIG = "python:webhook.gunicorn_conf"  # noqa: N806 - read as a constant
    server = subprocess.Popen(
        [
            gunicorn,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--config",
            CONFIG,
            "webhook:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = b'{"zen": "Design for failure."}'
        digest = hmac.new(b"s3cret-key", body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": f"sha256={digest}"}
        for _ in range(100):
            try:
                response = requests.post(
                    f"http://127.0.0.1:{port}/hook", data=body, headers=headers, timeout=5
                )
                break
            except requests.ConnectionError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json() == {"message": "pong"}
        assert response.headers["X-Partial-Secret"] == "s..key"
    finally:
        server.terminate()
        server.wait(30)


def test_the_gunicorn_hook_freezes_what_a_worker_loaded() -> None:
    """``webhook.gunicorn_conf.post_worker_init``: what the worker holds after loading the app moves to the permanent
    generation, so full collections during requests no longer walk it."""
    import gc

    from webhook import gunicorn_conf

    create_app({"TESTING": True, "DATABASE_URL": "sqlite://"})
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        gunicorn_conf.post_worker_init(object())
        assert gc.get_freeze_count() > 10_000
        assert sum(gc.get_count()) < 100
    finally:
        gc.unfreeze()


@pytest.mark.integration
def test_a_pooled_connection_the_server_dropped_is_replaced(
    postgres_database_url: sa.URL, postgres_admin_url: sa.URL
) -> None:
    """No ping before each request: a pooled PostgreSQL connection the server ended (a restart) fails the delivery
    lookup once, which is retried on a new connection; and the lookup leaves the connection transactional."""
    from webhook import hook

    app = create_app({"TESTING": True, "DATABASE_URL": postgres_database_url.render_as_string(False)})
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with app.app_context():
            pid = get_db().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with admin.connect() as connection:
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        with app.app_context():
            assert hook._recorded(f"no-such-delivery-{pid}") is None
            connection = get_db()
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
            assert connection.connection.dbapi_connection.autocommit is False
            assert connection.exec_driver_sql("SELECT now() = statement_timestamp()").scalar_one() is False
    finally:
        admin.dispose()
        close_engine(app)
