"""Triggering ``openaddr_ci`` through Airflow's REST API v2 (machine-ci.md §2.1 step 10).

Two calls, as airflow.md describes them: ``POST /auth/token`` with ``{"username", "password"}`` gives a JWT, sent as
``Authorization: Bearer …`` to ``POST /api/v2/dags/openaddr_ci/dagRuns`` with ``logical_date: null`` (required),
``dag_run_id`` and ``conf``. The token is kept until the API refuses it (401), then renewed once. Airflow's own
generated client (``apache-airflow-client``) has a release cycle of its own; two ``requests`` calls do not need it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import requests

from openaddr.github import pin_request_environment

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

DAG_ID = "openaddr_ci"


class TriggerFailed(Exception):
    """Airflow did not create the DAG run (unreachable, refused, or an error answer)."""


class AirflowTrigger:
    """Creates DAG runs on one api-server as one user.

    :param url: the api-server, e.g. ``http://127.0.0.1:8080``
    :param username: the user (SimpleAuthManager role ``op`` or better)
    :param password: its password
    :param timeout: seconds for connecting and for each answer
    """

    def __init__(self, url: str, username: str, password: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._session = requests.Session()
        # Proxies and CA bundle read from the environment once, not on every trigger (openaddr.github).
        pin_request_environment(self._session, self.url)
        self._token: str | None = None
        self._lock = threading.Lock()

    def _get_token(self) -> str:
        with self._lock:
            if self._token is None:
                response = self._session.post(
                    f"{self.url}/auth/token",
                    json={"username": self.username, "password": self.password},
                    timeout=self.timeout,
                )
                if response.status_code not in (200, 201):
                    raise TriggerFailed(
                        f"Airflow refused the login of {self.username}: HTTP {response.status_code}"
                    )
                self._token = str(response.json()["access_token"])
            return self._token

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call ``/api/v2<path>`` with the token, renewing a refused token once."""
        try:
            for attempt in (1, 2):
                token = self._get_token()
                response = self._session.request(
                    method,
                    f"{self.url}/api/v2{path}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self.timeout,
                    **kwargs,
                )
                if response.status_code == 401 and attempt == 1:
                    with self._lock:
                        self._token = None
                    continue
                return response
        except requests.RequestException as error:
            raise TriggerFailed(f"Airflow is unreachable: {type(error).__name__}") from error
        raise AssertionError("unreachable")

    def dag_run(self, dag_run_id: str, dag_id: str = DAG_ID) -> dict[str, Any]:
        """A DAG run as the REST API shows it (``state``, ``conf``, …).

        :raises TriggerFailed: on a connection error, a timeout or any answer but 200
        """
        response = self._request("GET", f"/dags/{dag_id}/dagRuns/{dag_run_id}")
        if response.status_code != 200:
            raise TriggerFailed(f"Airflow answered HTTP {response.status_code}")
        answer: dict[str, Any] = response.json()
        return answer

    def trigger(self, dag_run_id: str, conf: Mapping[str, Any], dag_id: str = DAG_ID) -> dict[str, Any]:
        """Create the DAG run ``dag_run_id`` of ``dag_id`` with ``conf``; return Airflow's answer.

        :raises TriggerFailed: on a connection error, a timeout or any answer but 200
        """
        body = {"dag_run_id": dag_run_id, "logical_date": None, "conf": dict(conf)}
        response = self._request("POST", f"/dags/{dag_id}/dagRuns", json=body)
        if response.status_code != 200:
            detail = response.text[:300]
            log.error("Airflow answered %s to triggering %s: %s", response.status_code, dag_run_id, detail)
            raise TriggerFailed(f"Airflow answered HTTP {response.status_code}")
        log.info("Triggered %s run %s", dag_id, dag_run_id)
        answer: dict[str, Any] = response.json()
        return answer
