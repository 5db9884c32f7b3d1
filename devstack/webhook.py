"""The webhook app of ``make run``: ``webhook:create_app()`` under gunicorn beside Airflow.

It runs in the embedded mode on the stack's Machine database and storage (the stack's environment), serves the
published run files under ``/files/`` and the runs' pages under ``/runs/<id>/``, so the Airflow UI's extra links
("Run outputs", "Results site") are http links that open: :func:`webhook_env` points ``OPENADDR_BASE_URL`` and
``OPENADDR_RESULTS_PUBLIC_URL`` of every component at it. Its GitHub webhook secret is generated once into
``<home>/webhook-secret`` (mode 600), as Airflow's password is kept under the home.

It triggers ``openaddr_ci`` through the api-server as its own SimpleAuthManager user ``webhook`` of role ``user``
(the least role that may create DAG runs; it may not change pools, connections or variables): the stack adds the
user to ``[core] simple_auth_manager_users`` and writes its generated password into SimpleAuthManager's password
file before Airflow first starts (:func:`load_airflow_password`); Airflow keeps the passwords it finds there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import sys
from typing import TYPE_CHECKING

from devstack import ROOT, StackError
from devstack.airflow_api import ADMIN, PASSWORDS_FILE
from devstack.supervise import Program

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

#: The program's name in supervisord (and its log's, ``logs/webhook.log``).
WEBHOOK = "webhook"
DEFAULT_WEBHOOK_PORT = 8079
SECRET_FILE = "webhook-secret"
#: The app's ``SECRET_KEY`` (session cookie, CSRF tokens), shared by its workers and kept across starts.
SESSION_KEY_FILE = "webhook-session-key"
#: The app's SimpleAuthManager user, and its role: ``user`` may trigger DAG runs, nothing of ``op`` or ``admin``.
AIRFLOW_USER = "webhook"
AIRFLOW_ROLE = "user"
#: Two sync workers: a page or a file while a delivery is handled, on the 2-core machine.
WORKERS = 2


def load_webhook_secret(home: Path, name: str = SECRET_FILE) -> str:
    """The stack's GitHub webhook secret from ``home/webhook-secret`` (or another secret of the app, ``name``:
    the session key), generated (mode 600) when missing."""
    path = home / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite the secret a running app uses; 0o600: never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(secrets.token_urlsafe(32) + "\n")
        log.info("Generated %s", path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty: delete it to generate a new webhook secret")
    return secret


def load_airflow_password(airflow_home: Path) -> str:
    """The password of :data:`AIRFLOW_USER` in SimpleAuthManager's password file of ``airflow_home``, generated
    into it when missing (the file is created, or kept, with mode 600; the other users' passwords are kept).

    SimpleAuthManager generates a password only for a user its file does not name, and keeps the others, so the
    one written here before the api-server starts is the user's password from then on.

    :raises StackError: when the file is not a JSON object, or names the user with an empty password
    """
    path = airflow_home / PASSWORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as stream:
        # The lock SimpleAuthManager takes on the file while it adds its own users.
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            text = stream.read().strip()
            try:
                passwords = json.loads(text) if text else {}
            except ValueError as error:
                raise StackError(f"{path} is not JSON: {error}") from error
            if not isinstance(passwords, dict):
                raise StackError(f"{path} is not a JSON object of user → password")
            if AIRFLOW_USER not in passwords:
                passwords[AIRFLOW_USER] = secrets.token_urlsafe(24)
                stream.seek(0)
                stream.truncate()
                stream.write(json.dumps(passwords) + "\n")
                log.info("Generated the Airflow password of %s in %s", AIRFLOW_USER, path)
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    password = str(passwords[AIRFLOW_USER])
    if not password:
        raise StackError(
            f"{path} names {AIRFLOW_USER} with an empty password: remove the entry to generate one"
        )
    return password


def webhook_url(port: int) -> str:
    """The app's URL on loopback."""
    return f"http://127.0.0.1:{port}"


def webhook_env(home: Path, port: int, airflow_port: int) -> dict[str, str]:
    """What the stack's environment adds for the app and the extra links: the webhook secret, the results
    site (``OPENADDR_BASE_URL``, ``OA_WEBHOOK_BASE_URL``), the storage's public URL (its ``/files``), and the
    app's way to trigger ``openaddr_ci``: the api-server on ``airflow_port`` as :data:`AIRFLOW_USER`, which
    SimpleAuthManager's users then include beside ``admin``.

    :param home: the stack's home (``AIRFLOW_HOME`` is ``home/airflow``)
    :param port: the app's port
    :param airflow_port: the api-server's port
    """
    url = webhook_url(port)
    return {
        "GITHUB_WEBHOOK_SECRETS": load_webhook_secret(home),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{AIRFLOW_USER}:{AIRFLOW_ROLE}",
        "OA_WEBHOOK_AIRFLOW_API_URL": f"http://127.0.0.1:{airflow_port}",
        "OA_WEBHOOK_AIRFLOW_USERNAME": AIRFLOW_USER,
        "OA_WEBHOOK_AIRFLOW_PASSWORD": load_airflow_password(home / "airflow"),
        "OPENADDR_BASE_URL": url,
        "OPENADDR_RESULTS_PUBLIC_URL": f"{url}/files",
        "OA_WEBHOOK_BASE_URL": url,
        # The review queue's sign-in (the fake GitHub's OAuth app: devstack/github.py's github_env).
        "OA_WEBHOOK_SECRET_KEY": load_webhook_secret(home, SESSION_KEY_FILE),
        # Plain http on loopback: a Secure cookie would not come back.
        "OA_WEBHOOK_SESSION_COOKIE_SECURE": "false",
    }


def webhook_server(port: int) -> Program:
    """gunicorn serving ``webhook:create_app()`` on ``127.0.0.1:port``, started before Airflow, stopped after."""
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(WORKERS),
        "--chdir", str(ROOT),
        "--config", "python:webhook.gunicorn_conf",
        "--access-logfile", "-",
        "webhook:create_app()",
    ]  # fmt: skip
    return Program(WEBHOOK, command, kind="extra", stop_timeout=10)
