"""The webhook app of ``make run``: ``webhook:create_app()`` under gunicorn beside Airflow.

It runs in the embedded mode on the stack's Machine database and storage (the stack's environment), serves the
published run files under ``/files/`` and the runs' pages under ``/runs/<id>/``, so the Airflow UI's extra links
("Run outputs", "Results site") are http links that open: :func:`webhook_env` points ``OPENADDR_BASE_URL`` and
``OPENADDR_RESULTS_PUBLIC_URL`` of every component at it. Its GitHub webhook secret is generated once into
``<home>/webhook-secret`` (mode 600), as Airflow's password is kept under the home.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from typing import TYPE_CHECKING

from devstack import ROOT
from devstack.supervise import Program

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

#: The program's name in supervisord (and its log's, ``logs/webhook.log``).
WEBHOOK = "webhook"
DEFAULT_WEBHOOK_PORT = 8079
SECRET_FILE = "webhook-secret"
#: Two sync workers: a page or a file while a delivery is handled, on the 2-core machine.
WORKERS = 2


def load_webhook_secret(home: Path) -> str:
    """The stack's GitHub webhook secret from ``home/webhook-secret``, generated (mode 600) when missing."""
    path = home / SECRET_FILE
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


def webhook_url(port: int) -> str:
    """The app's URL on loopback."""
    return f"http://127.0.0.1:{port}"


def webhook_env(home: Path, port: int) -> dict[str, str]:
    """What the stack's environment adds for the app and the extra links: the webhook secret, the results
    site (``OPENADDR_BASE_URL``, ``OA_WEBHOOK_BASE_URL``) and the storage's public URL (its ``/files``)."""
    url = webhook_url(port)
    return {
        "GITHUB_WEBHOOK_SECRETS": load_webhook_secret(home),
        "OPENADDR_BASE_URL": url,
        "OPENADDR_RESULTS_PUBLIC_URL": f"{url}/files",
        "OA_WEBHOOK_BASE_URL": url,
    }


def webhook_server(port: int) -> Program:
    """gunicorn serving ``webhook:create_app()`` on ``127.0.0.1:port``, started before Airflow, stopped after."""
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(WORKERS),
        "--chdir", str(ROOT),
        "--access-logfile", "-",
        "webhook:create_app()",
    ]  # fmt: skip
    return Program(WEBHOOK, command, kind="extra", stop_timeout=10)
