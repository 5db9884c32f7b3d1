"""The Airflow UI in headless Chromium: a ``process_source`` task instance's extra links are shown and open.

The ``openaddr_ci`` DAG runs for real (``dag.test()``, in this process, on the session's Airflow metadata database)
over two copies of the Park County source, recording into the results site's database and storage (the ``site``
fixture) with ``openaddr_base_url`` the loopback site and ``openaddr_results_public_url`` its ``/files``: at the
set's path it reuses the set's run (a copy), at a new path it is processed. Then ``airflow api-server`` is started
on that metadata database with a SimpleAuthManager ``admin``, and the tests sign in through the UI's login form.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import requests

from devstack.procs import free_port
from openaddr.db import make_engine
from openaddr.db.runs import job_runs
from openaddr.sources_repo import git_blob_sha
from tests.airflow_fixtures import connection_json
from tests.browser.browsing import DESKTOP, PARK, fixture_source, screenshots_folder

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.dag_processing.dagbag import DagBag

    from tests.browser.browsing import Results, Site, Watched
    from tests.servers import LoopbackHTTPServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "admin"
START_TIMEOUT = 180.0
#: Park County again at a path the set never had: processed, not reused.
PARK_AGAIN = "sources/us/wy/park_county.json"
JOB = "airflow-ui-job"
LINKS = ("Results site", "Run outputs")


@dataclass
class AirflowUI:
    """The api-server on loopback, the admin's password, and the DAG run with its runs by source path."""

    url: str
    password: str
    dag_run_id: str
    map_indexes: dict[str, int]
    runs: dict[str, dict[str, Any]]


def start_api_server(port: int, log: Any) -> subprocess.Popen[bytes]:
    """``airflow api-server`` on this session's metadata database (``tests/conftest.py``'s environment)."""
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.Popen(
        [airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=log, start_new_session=True
    )


@pytest.fixture(scope="module")
def airflow_ui(
    machine_dags: DagBag,
    site: Site,
    results: Results,
    fixtures: Path,
    http_server: LoopbackHTTPServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AirflowUI]:
    """The DAG run, then the api-server on its metadata database (started first: it starts while the DAG runs)."""
    import sqlalchemy as sa

    work = tmp_path_factory.mktemp("airflow-ui")
    home = Path(os.environ["AIRFLOW_HOME"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "api-server.log").open("wb")
    server = start_api_server(port, log)
    try:
        park = fixture_source(fixtures, "us-wy-park.json", http_server.url("/data/us-wy-park.zip"))
        conf = {
            "job_id": JOB,
            "commit_sha": "a1" + "0" * 38,
            "sources": [
                {"path": path, "blob_sha": git_blob_sha(park), "content": park.decode()}
                for path in (PARK, PARK_AGAIN)
            ],
        }
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AIRFLOW_CONN_OPENADDR_MACHINE_DB", connection_json(sa.make_url(site.database_url)))
            patch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS", str(site.storage.root))
            patch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS_PUBLIC_URL", f"{site.url}/files")
            patch.setenv("AIRFLOW_VAR_OPENADDR_BASE_URL", site.url)
            patch.setenv("OPENADDR_ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8")
            patch.setenv("OPENADDR_SCRATCH", str(work / "scratch"))
            dag_run = machine_dags.dags["openaddr_ci"].test(run_conf=conf)
        assert dag_run.state == "success"
        indexes = {
            ti.rendered_map_index: ti.map_index
            for ti in dag_run.get_task_instances()
            if ti.task_id == "process_source"
        }
        engine = make_engine(site.database_url)
        try:
            runs = {run["source_path"]: run for run in job_runs(engine, JOB)}
        finally:
            engine.dispose()
        labels = {PARK: "us/wy/park/addresses/primary", PARK_AGAIN: "us/wy/park_county/addresses/primary"}

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
            time.sleep(0.5)
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        yield AirflowUI(
            url,
            passwords[ADMIN],
            dag_run.run_id,
            {path: indexes[label] for path, label in labels.items()},
            runs,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()


def open_task_instance(page: Watched, airflow: AirflowUI, path: str) -> None:
    """The task instance's Details tab (where Airflow 3.3 shows the extra links), signing in first if the UI
    asks (SimpleAuthManager's login form; the session's tab keeps the token afterwards)."""
    run = quote(airflow.dag_run_id, safe="")
    index = airflow.map_indexes[path]
    details = f"{airflow.url}/dags/openaddr_ci/runs/{run}/tasks/process_source/mapped/{index}/details"
    page.page.goto(details)
    username = page.page.get_by_label("Username")
    extra = page.page.get_by_text("Extra Links")
    username.or_(extra).first.wait_for(timeout=60_000)
    if username.is_visible():
        username.fill(ADMIN)
        page.page.get_by_label("Password").fill(airflow.password)
        page.page.get_by_role("button", name="Sign in").click()
        # The sign-in redirects (to the page asked for, through the UI's own navigation): wait until the form is
        # gone and that navigation has settled, else a goto now is aborted by it (net::ERR_ABORTED).
        username.wait_for(state="detached", timeout=60_000)
        page.page.wait_for_load_state("load")
        if not extra.is_visible():
            page.page.goto(details)
    extra.wait_for(timeout=60_000)


@pytest.mark.parametrize(("name", "path"), [("processed", PARK_AGAIN), ("reused", PARK)])
def test_the_task_instances_extra_links_are_shown_and_open_the_run_on_the_site(
    name: str, path: str, page: Watched, airflow_ui: AirflowUI, site: Site, results: Results
) -> None:
    run = airflow_ui.runs[path]
    published = run["copy_of"] or run["id"]
    if name == "reused":
        assert run["copy_of"] == results.set_runs[PARK]["id"]
    else:
        assert run["copy_of"] is None
    page.page.set_viewport_size(DESKTOP)
    open_task_instance(page, airflow_ui, path)

    buttons = {link: page.page.get_by_role("link", name=link, exact=True) for link in LINKS}
    for button in buttons.values():
        button.wait_for()
        assert button.is_visible()
    hrefs = {link: button.get_attribute("href") for link, button in buttons.items()}
    assert hrefs == {
        "Results site": f"{site.url}/runs/{run['id']}/",
        "Run outputs": f"{site.url}/files/runs/{published}/index.json",
    }
    page.page.screenshot(path=screenshots_folder() / f"airflow-task-instance-{name}.png", full_page=True)

    # Each opens (in a new tab: another origin) and answers 200: the run's page, and its published state.
    answers: dict[str, int] = {}
    page.page.context.on("response", lambda response: answers.setdefault(response.url, response.status))
    for link, button in buttons.items():
        with page.page.context.expect_page() as opened:
            button.click()
        tab = opened.value
        tab.wait_for_load_state("load")
        try:
            assert tab.url == hrefs[link]
            assert answers[tab.url] == 200
            if link == "Results site":
                heading = tab.locator("h1").inner_text()
                assert heading == f"Run {run['id']}: {path}"
                if name == "processed":
                    tab.set_viewport_size(DESKTOP)
                    tab.screenshot(
                        path=screenshots_folder() / "airflow-results-site-link.png", full_page=True
                    )
            else:
                keys, values = json.loads(tab.request.get(tab.url).text())
                state = dict(zip(keys, values, strict=True))
                assert state["processed"].startswith(f"{site.url}/files/runs/{published}/")
                assert state["address count"] == run["address_count"] > 0
        finally:
            tab.close()
