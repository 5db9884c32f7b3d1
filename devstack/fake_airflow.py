"""A stand-in of Airflow's REST API on loopback: the two endpoints the webhook calls, as a real HTTP server.

:class:`FakeAirflow` answers, shaped like Airflow 3.3.2's answers: ``POST /auth/token`` (``{"username",
"password"}`` → 201 ``{"access_token"}``) and ``POST /api/v2/dags/{dag_id}/dagRuns`` (Bearer token; ``logical_date``
must be present, else 422; a taken ``dag_run_id`` 409; else 200 with the run) and ``GET …/dagRuns/{dag_run_id}``.
It records every run it created. The webhook tests use it (``tests/webhook/conftest.py``), and so does
``make bench-webhook``, which must not import the tests.
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack.fake_github import send


class FakeAirflow:
    """Airflow's token and trigger endpoints on ``127.0.0.1:port`` (0: chosen by the system).

    :param username: the user ``POST /auth/token`` accepts
    :param password: its password
    """

    def __init__(self, username: str, password: str, port: int = 0) -> None:
        server = self
        self.username, self.password = username, password

        class Handler(BaseHTTPRequestHandler):
            #: Keep-alive, as Airflow's api-server (uvicorn): the webhook's session sends trigger after trigger on
            #: one connection instead of a connection (and a server thread) each.
            protocol_version = "HTTP/1.1"
            #: The headers and the body are two writes: without TCP_NODELAY the body waits for the client's delayed
            #: ACK (40 ms) on a kept connection.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                server.handle(self, self.path, dict(self.headers.items()), body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.get(self, self.path, dict(self.headers.items()))

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget runs, tokens and knobs."""
        with self._lock:
            self.runs: dict[str, dict[str, Any]] = {}
            self.tokens: set[str] = set()
            self.logins = 0
            #: Answer the next triggers with these HTTP statuses.
            self.fail_statuses: list[int] = []

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def json(self, handler: BaseHTTPRequestHandler, data: Any, status: int) -> None:
        """Answer ``data`` as JSON."""
        send(handler, json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"})

    def get(self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str]) -> None:
        """``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}``."""
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            if token not in self.tokens:
                self.json(handler, {"detail": "Not authenticated"}, 401)
                return
            run = self.runs.get(path.rsplit("/dagRuns/", 1)[-1]) if "/dagRuns/" in path else None
        if run is None:
            self.json(handler, {"detail": "Not Found"}, 404)
            return
        self.json(handler, run, 200)

    def handle(self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str], body: Any) -> None:
        """``POST /auth/token`` and ``POST /api/v2/dags/{dag_id}/dagRuns``."""
        if path == "/auth/token":
            if body != {"username": self.username, "password": self.password}:
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
