"""A small client of Airflow's REST API (v2) and health endpoint, as the stack and its users need it.

Airflow's own Python client (``apache-airflow-client``) is a generated package of its own release cycle; the
dozen calls here (token, health, pools, DAGs, runs) are plain ``requests`` calls with one token renewal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from devstack import StackError

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The SimpleAuthManager user the stack logs in as (role admin).
ADMIN = "admin"
#: SimpleAuthManager writes the generated passwords here (in ``AIRFLOW_HOME``) and keeps them across starts.
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
#: ``/api/v2/monitor/health`` key of each component that heartbeats (the api-server answers itself).
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
FINAL_STATES = frozenset({"success", "failed"})
REQUEST_TIMEOUT = 30.0


class ApiError(StackError):
    """The REST API refused a request, or the password to call it is missing."""


def parse_time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time of the REST API, or None."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def unhealthy(health: Mapping[str, Any], since: dt.datetime | None) -> list[str]:
    """The components a health answer does not report healthy since ``since``.

    The endpoint answers 200 whatever the state and reports the newest job of each kind, which after a restart
    may be the previous stack's, still within its heartbeat threshold: a component counts only once it has
    heartbeated since ``since``.
    """
    waiting = []
    if (health.get("metadatabase") or {}).get("status") != "healthy":
        waiting.append("metadatabase")
    for name, key in HEALTH_KEYS.items():
        info = health.get(key) or {}
        beat = parse_time(info.get(f"latest_{key}_heartbeat"))
        fresh = beat is not None and since is not None and beat >= since
        if info.get("status") != "healthy" or not fresh:
            waiting.append(name)
    return waiting


class AirflowApi:
    """Airflow's REST API on ``url`` as ``admin``, with the password SimpleAuthManager generated.

    :param url: the api-server's base URL (``http://127.0.0.1:8080``)
    :param airflow_home: where SimpleAuthManager's password file is
    """

    def __init__(self, url: str, airflow_home: Path) -> None:
        self.url = url
        self.airflow_home = Path(airflow_home)
        self._session = requests.Session()
        self._token: str | None = None

    def check_alive(self) -> None:
        """Raise when what serves the API has stopped (the stack overrides it); polls call it."""

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
        self._token = None

    def password(self) -> str:
        """The generated password of ``admin`` (SimpleAuthManager writes it when the api-server first starts,
        and keeps it across starts).

        :raises ApiError: when the password file does not name the user
        """
        path = self.airflow_home / PASSWORDS_FILE
        try:
            return str(json.loads(path.read_text())[ADMIN])
        except (OSError, ValueError, KeyError) as error:
            raise ApiError(f"no password for {ADMIN} in {path}: {error}") from error

    def token(self) -> str:
        """A JWT for the REST API (``POST /auth/token`` as ``admin``), cached until the API refuses it."""
        if self._token is None:
            response = self._session.post(
                f"{self.url}/auth/token",
                json={"username": ADMIN, "password": self.password()},
                timeout=REQUEST_TIMEOUT,
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the REST API (``path`` below ``/api/v2``) with the token; a refused token is renewed once.

        :raises requests.HTTPError: on an error status
        """
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            headers = {**extra, "Authorization": f"Bearer {self.token()}"}
            response = self._session.request(method, f"{self.url}/api/v2{path}", headers=headers, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            break
        response.raise_for_status()
        return response

    def health(self) -> dict[str, Any]:
        """The answer of ``/api/v2/monitor/health`` (no token needed)."""
        response = self._session.get(f"{self.url}/api/v2/monitor/health", timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def warm_up(self, timeout: float = 180.0) -> float:
        """Make the api-server build its Execution API now rather than on the first task's first call.

        The Execution API is a Cadwyn app, which generates its versioned routers on the first request it
        receives, synchronously on the api-server's event loop: ~10 s of CPU on a busy 2-core machine, during
        which the whole api-server (REST API included) answers nothing. A task's supervisor gives up on that
        first call after ``[workers] execution_api_timeout`` (5 s) and retries; the abandoned call then ends
        with 400. Any request below ``/execution/`` triggers the build: its health endpoint, unauthenticated.

        :return: seconds the request took
        :raises ApiError: when the api-server does not answer in time
        """
        started = time.monotonic()
        try:
            response = self._session.get(f"{self.url}/execution/health", timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as error:
            raise ApiError(f"the Execution API did not answer: {error}") from error
        took = time.monotonic() - started
        log.info("Execution API ready after %.1f s", took)
        return took

    def set_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create or resize a pool."""
        entity = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        action = {"action": "create", "entities": [entity], "action_on_existence": "overwrite"}
        result = self.request("PATCH", "/pools", json={"actions": [action]}).json()
        errors = (result.get("create") or {}).get("errors")
        if errors:
            raise ApiError(f"could not set pool {name}: {errors}")
        log.info("Pool %s: %d slots", name, slots)

    def wait_for_dags(self, dag_ids: tuple[str, ...], timeout: float) -> None:
        """Wait until the dag-processor has parsed each DAG.

        :raises ApiError: when a DAG file fails to import, or on timeout
        """
        started = time.monotonic()
        missing = list(dag_ids)
        while time.monotonic() - started < timeout:
            self.check_alive()
            missing = [dag_id for dag_id in missing if self.dag(dag_id) is None]
            if not missing:
                log.info("DAGs parsed: %s", ", ".join(dag_ids))
                return
            errors = self.request("GET", "/importErrors").json().get("import_errors") or []
            if errors:
                text = "\n".join(f"{error.get('filename')}: {error.get('stack_trace')}" for error in errors)
                raise ApiError(f"DAG files failed to import:\n{text}")
            time.sleep(1)
        raise ApiError(f"DAGs not parsed after {timeout:.0f} s: {', '.join(missing)}")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """A DAG's record (``is_paused``, ``next_dagrun_run_after``, …), None when it is not parsed yet."""
        try:
            result: dict[str, Any] = self.request("GET", f"/dags/{dag_id}").json()
        except requests.HTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return None
            raise
        return result

    def unpause(self, dag_id: str, paused: bool = False) -> None:
        """Unpause a DAG (new DAGs start paused), or pause it with ``paused``."""
        self.request(
            "PATCH", f"/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": paused}
        )

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Create a DAG run now; return its run id.

        :param conf: the run's conf
        :param run_id: the run id to use (default: Airflow's ``manual__<time>``); a taken id fails with 409
        """
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        created = self.request("POST", f"/dags/{dag_id}/dagRuns", json=body).json()
        log.info("Triggered %s run %s", dag_id, created["dag_run_id"])
        return str(created["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """A DAG's runs (``dag_run_id``, ``state``, ``queued_at``, ``run_after``, …), oldest first."""
        answer = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after"}).json()
        return list(answer["dag_runs"])

    def run_ids(self, dag_id: str) -> list[str]:
        """The ids of a DAG's runs, oldest first."""
        return [str(run["dag_run_id"]) for run in self.runs(dag_id)]

    def state(self, dag_id: str, run_id: str) -> str:
        """A DAG run's state (``queued``, ``running``, ``success``, ``failed``)."""
        return str(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"])

    def wait(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until a DAG run ends; return its final state (``success`` or ``failed``). A poll the api-server
        does not answer in time is logged and repeated.

        :raises TimeoutError: when it has not ended after ``timeout`` seconds
        """
        started = time.monotonic()
        state = "unknown"
        while True:
            self.check_alive()
            try:
                state = self.state(dag_id, run_id)
            except (requests.ConnectionError, requests.Timeout) as error:
                # A busy api-server (a loaded 2-core machine) may miss one poll; a stopped one fails check_alive.
                log.warning("Polling %s run %s: %s", dag_id, run_id, error)
            if state in FINAL_STATES:
                return state
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(1)
