"""The results site in a real headless Chromium: fixtures (issue 12, point 5).

* ``chromium`` (session): Debian's ``chromium`` (``/usr/bin/chromium``; Playwright's own browser builds are never
  downloaded). Missing under CI (``CI`` set) the tests **fail** saying so; a developer without it gets a skip whose
  reason is the install command.
* ``browser`` (session): one headless Chromium for the whole session, driven by Playwright's sync API.
* ``site`` (session): the webhook app (``webhook.create_app``, testing) on a migrated SQLite Machine database in
  tmp, served on a loopback port by werkzeug's WSGI server in a thread, with its storage folder under ``/files/``
  (``FILES_FOLDER``, as in the embedded mode) and ``BASE_URL`` the loopback URL.
* ``results`` (session): the database filled the way the DAGs fill it, through the library's task bodies
  (:mod:`openaddr.machine`): a batch set of real fixture sources (shapefile, a v2 file, a skipped one, a 404 and a
  broken file) processed by ``process-one`` subprocesses against the loopback data server, then completed; then a
  CI job of two of them, both reused from the set (Park's success, Berkeley's failure). Published to the site's storage with its http URLs.
* ``page``: the session's one tab (``tab``), at phone width, recording console errors, page errors, failed
  requests and answers of 400 or more (:class:`~tests.browser.browsing.Watched`), cleared for each test.

Screenshots go to ``$TEST_ARTIFACTS/screenshots/`` (default ``test-artifacts/`` in the checkout, git-ignored).
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.serving import WSGIRequestHandler

from openaddr import machine
from openaddr.db import make_engine
from openaddr.db.runs import AirflowTask
from openaddr.sources_repo import SourceFile, SourceListing, git_blob_sha
from openaddr.storage import LocalStorage
from tests.browser.browsing import (
    BERKELEY,
    BROKEN,
    CHROMIUM,
    COMMIT,
    INSTALL,
    JOB_COMMIT,
    OWNER,
    PARK,
    PHONE,
    REPOSITORY,
    SOURCES,
    Results,
    Site,
    Watched,
    b64,
    fixture_source,
    machine_runs,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from playwright.sync_api import Browser

    from tests.servers import LoopbackHTTPServer

# -- the browser ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium executable; fails under CI when missing, else skips with the install command."""
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if found:
        return found
    message = f"Debian's chromium is not installed (the browser tests drive it through Playwright): {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run installs it on a fresh machine)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium for the session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def tab(browser: Browser) -> Iterator[Watched]:
    """The session's one tab (opening a context costs about a second: the tests share it)."""
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(60_000)  # Airflow's UI on a busy 2-core machine
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


@pytest.fixture
def page(tab: Watched) -> Watched:
    """The session's tab at phone width (the narrowest layout: horizontal overflow shows there), its problems
    cleared."""
    tab.page.set_viewport_size(PHONE)
    tab.take()
    return tab


# -- the site and its data -----------------------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    """werkzeug's request handler without a log line per request (a crawl makes hundreds)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Quiet."""


@pytest.fixture(scope="session")
def site(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The webhook app on a loopback port (werkzeug's threaded WSGI server), its storage under ``/files/``."""
    from werkzeug.serving import make_server

    from webhook import create_app
    from webhook.db import close_engine

    folder = tmp_path_factory.mktemp("browser-site")
    database = folder / "machine.db"
    shutil.copyfile(sqlite_template, database)
    storage_folder = folder / "storage"
    storage_folder.mkdir()
    database_url = f"sqlite:///{database}"
    config = {"TESTING": True, "DATABASE_URL": database_url, "FILES_FOLDER": str(storage_folder)}
    app = create_app(config)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    app.config.update(BASE_URL=url, RESULTS_PUBLIC_URL=f"{url}/files")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Site(url, app, LocalStorage(storage_folder, public_url=f"{url}/files"), database_url)
    finally:
        server.shutdown()
        thread.join(10)
        close_engine(app)


@pytest.fixture(scope="session")
def results(
    site: Site, fixtures: Path, http_server: LoopbackHTTPServer, tmp_path_factory: pytest.TempPathFactory
) -> Results:
    """A completed batch set and a CI job of real fixture sources, processed and recorded as the DAGs do."""
    http_server.add("/browser/missing.zip", b"gone\n", status=404)
    files = {
        path: fixture_source(fixtures, name, http_server.url(route))
        for path, (name, route) in SOURCES.items()
    }
    files[BROKEN] = b'{"schema": 2, "layers": '
    work = tmp_path_factory.mktemp("browser-work")
    scratch, child_tmp = work / "scratch", work / "tmp"
    scratch.mkdir()
    child_tmp.mkdir()
    env = {
        **os.environ,
        "OPENADDR_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8",
        "OPENADDR_RETRY_DELAYS": "0.01",
        "TMPDIR": str(child_tmp),
    }
    engine = make_engine(site.database_url)
    try:
        # The nightly set (openaddr_batch: create_set, list_sources, process_source per entry, complete_set).
        listing = SourceListing(
            owner=OWNER,
            repository=REPOSITORY,
            commit_sha=COMMIT,
            files=[SourceFile(path, git_blob_sha(raw), raw) for path, raw in sorted(files.items())],
        )
        dag_run = "scheduled__browser"
        set_id = machine.create_batch_set(engine, site.storage, listing, dag_run_id=dag_run)
        planned = machine.plan_batch_set(engine, site.storage, set_id)

        def process(index: int, argument: dict[str, Any], dag_id: str, dag_run: str) -> None:
            task = AirflowTask(dag_id, dag_run, "process_source", index)
            owner = machine.RunOwner(**argument["run_owner"])
            machine.process_source(
                engine, site.storage, argument["entry"], owner, scratch=scratch, env=env, task=task
            )

        # Mapped instances run side by side, as the executor runs them (SQLite in WAL mode takes the writes).
        with ThreadPoolExecutor(max_workers=3) as pool:
            for done in [
                pool.submit(process, *item, "openaddr_batch", dag_run) for item in enumerate(planned)
            ]:
                done.result()
        machine.complete_batch_set(engine, set_id)
        set_runs = {run["source_path"]: run for run in machine_runs(engine, set_id=set_id)}

        # A push's CI job of two files (openaddr_ci: plan_job, process_source, finish_job): Park is reused from
        # the set, Berkeley fails again.
        job_id = "browser-job"
        conf = {
            "job_id": job_id,
            "commit_sha": JOB_COMMIT,
            "event": "push",
            "github": {
                "owner": OWNER,
                "repository": REPOSITORY,
                "status_url": f"https://api.github.com/repos/{OWNER}/{REPOSITORY}/statuses/{JOB_COMMIT}",
            },
            "sources": [
                {"path": path, "blob_sha": git_blob_sha(files[path]), "content_b64": b64(files[path])}
                for path in (PARK, BERKELEY)
            ],
        }
        planned = machine.plan_ci_job(engine, site.storage, conf, dag_run_id=f"ci__{job_id}")
        for index, argument in enumerate(planned):
            process(index, argument, "openaddr_ci", f"ci__{job_id}")
        machine.finish_ci_job(engine, job_id)
        job_runs = {run["source_path"]: run for run in machine_runs(engine, job_id=job_id)}
    finally:
        engine.dispose()
    return Results(set_id, job_id, set_runs, job_runs)
