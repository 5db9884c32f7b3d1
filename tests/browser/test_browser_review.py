"""The review queue and GitHub sign-in in a real headless Chromium (issue 14, points 2 and 5).

The app runs on a copy of the browser tests' database (``results``: real ``process-one`` runs), with two runs of
Park added in a later set whose counts fell to a third and a quarter, held by the real quality gate
(:func:`openaddr.quality.gate_warning` against the set's Park run); their state is the Park run's, so the queue
shows its real preview. Sign-in goes through the fake GitHub's OAuth pages on loopback (``tests/github_server.py``):
Chromium follows the site's redirect to the fake's authorize page, types a login, and comes back through the
callback. A non-member is refused; a member accepts one run and rejects the other with the queue's buttons (forms
with their CSRF token). Screenshots: ``review-queue-desktop.png``, ``review-queue-phone.png`` (before deciding) and
``review-queue-decided-desktop.png``.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.db import make_engine
from openaddr.db.jobs import create_set
from openaddr.db.results import latest_runs
from openaddr.db.review import held_runs
from openaddr.db.runs import finish_run, get_run, insert_run, utcnow
from openaddr.quality import gate_warning
from tests.browser.browsing import (
    DESKTOP,
    OWNER,
    PARK,
    PHONE,
    REPOSITORY,
    Watched,
    overflow,
    screenshots_folder,
)
from tests.browser.conftest import QuietHandler

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from playwright.sync_api import Browser

    from tests.browser.browsing import Results, Site
    from tests.github_server import FakeGitHub

pytestmark = pytest.mark.integration

ORG = "openaddresses"
CLIENT_ID, CLIENT_SECRET = "Iv1.browser-review", "browser-review-secret"


def held_run(engine: sa.Engine, park: dict[str, Any], set_id: int, share: int) -> tuple[int, str]:
    """A run of Park's entry in ``set_id`` whose count is 1/``share`` of Park's, with the gate's warning."""
    now = utcnow()
    run_id = insert_run(
        engine,
        source_path=PARK,
        source_layer=park["source_layer"],
        layer_name=park["layer_name"],
        source_data=park["source_data"],
        set_id=set_id,
        started=now,
        now=now,
    )
    count = park["address_count"] // share
    stats = dict(park["stats"])
    stats["count"] = count
    stats["filled"] = {key: value // share for key, value in stats["filled"].items()}
    warning = gate_warning(
        engine,
        run_id,
        stats,
        source_path=PARK,
        source_layer=park["source_layer"],
        layer_name=park["layer_name"],
    )
    assert warning is not None
    assert warning.startswith("Address count dropped")
    state = {**park["state"], "address count": count}
    finish_run(engine, run_id, state=state, stats=stats, warning=warning, attempt_started=now, now=now)
    return run_id, warning


@pytest.fixture
def review_site(
    site: Site, results: Results, github_server: FakeGitHub, tmp_path: Path
) -> Iterator[tuple[str, str, list[tuple[int, str]]]]:
    """The app with sign-in, on a copy of the browser database plus two held runs: ``(url, database url, held)``."""
    from werkzeug.serving import make_server

    from webhook import create_app
    from webhook.db import close_engine

    github_server.reset()
    github_server.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    github_server.add_user("alice", [ORG])
    github_server.add_user("mallory", ["elsewhere"])
    database = tmp_path / "machine.db"
    source = sqlite3.connect(site.database_url.removeprefix("sqlite:///"))
    target = sqlite3.connect(database)
    source.backup(target)  # consistent, WAL included
    source.close()
    target.close()
    database_url = f"sqlite:///{database}"
    engine = make_engine(database_url)
    park = get_run(engine, results.set_runs[PARK]["id"])
    assert park is not None
    set_id = create_set(engine, owner=OWNER, repository=REPOSITORY, commit_sha="f" * 40)
    held = [held_run(engine, park, set_id, 3), held_run(engine, park, set_id, 4)]
    engine.dispose()

    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "FILES_FOLDER": str(site.storage.root),
            "RESULTS_PUBLIC_URL": f"{site.url}/files",
            "SECRET_KEY": "browser review secret",
            "GITHUB_CLIENT_ID": CLIENT_ID,
            "GITHUB_CLIENT_SECRET": CLIENT_SECRET,
            "GITHUB_OAUTH_URL": github_server.base_url,
            "GITHUB_API_URL": github_server.base_url,
            "MAINTAINERS_ORG": ORG,
            "SESSION_COOKIE_SECURE": False,  # plain http on loopback
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    app.config["BASE_URL"] = url
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield url, database_url, held
    finally:
        server.shutdown()
        thread.join(10)
        close_engine(app)
        github_server.reset()


def sign_in(tab: Watched, url: str, login: str) -> None:
    """From the queue, "Sign in with GitHub", the fake GitHub's authorize page as ``login``."""
    tab.page.goto(f"{url}/review/")
    tab.page.get_by_role("link", name="Sign in with GitHub").click()
    tab.page.wait_for_url("**/login/oauth/authorize?**")
    tab.page.get_by_label("Sign in as").fill(login)
    tab.page.get_by_role("button", name="Authorize").click()


def test_sign_in_review_and_decide_in_chromium(
    browser: Browser, review_site: tuple[str, str, list[tuple[int, str]]], github_server: FakeGitHub
) -> None:
    url, database_url, held = review_site
    (first, first_warning), (second, second_warning) = held
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(60_000)
    tab = Watched(context.new_page())
    try:
        tab.page.goto(f"{url}/review/")
        for run_id, warning in held:
            item = tab.page.locator(f"#run-{run_id}")
            assert warning in item.inner_text()
        assert tab.page.get_by_role("button", name=f"Accept run {first}").count() == 0

        # A non-member: GitHub's pages, then the site's refusal; still no forms.
        sign_in(tab, url, "mallory")
        tab.page.wait_for_url(f"{url}/auth/callback?**")
        assert "mallory is not a member of the GitHub organisation openaddresses" in tab.page.inner_text(
            "body"
        )
        tab.page.goto(f"{url}/review/")
        assert tab.page.get_by_role("button", name=f"Accept run {first}").count() == 0

        # A member.
        sign_in(tab, url, "alice")
        tab.page.wait_for_url(f"{url}/review/")
        assert "Signed in as alice" in tab.page.inner_text(".signin")
        previews = tab.page.eval_on_selector_all(
            "li.held-run figure.preview img",
            "images => images.map(image => [image.complete, image.naturalWidth])",
        )
        assert previews == [[True, 1024], [True, 1024]]
        folder = screenshots_folder()
        tab.page.screenshot(path=str(folder / "review-queue-desktop.png"), full_page=True)
        tab.page.set_viewport_size(PHONE)
        width, viewport = overflow(tab.page)
        assert width <= viewport, f"the queue is {width} px wide on a {viewport} px phone"
        tab.page.screenshot(path=str(folder / "review-queue-phone.png"), full_page=True)
        tab.page.set_viewport_size(DESKTOP)

        tab.page.get_by_role("button", name=f"Accept run {first}").click()
        tab.page.wait_for_url(f"{url}/review/")
        assert f"Run {first} accepted" in tab.page.inner_text("p.flash")
        tab.page.get_by_role("button", name=f"Reject run {second}").click()
        tab.page.wait_for_url(f"{url}/review/")
        assert f"Run {second} rejected" in tab.page.inner_text("p.flash")
        assert "No run is held for review." in tab.page.inner_text("main")
        decisions = tab.page.locator("table.decisions tr").all_inner_texts()
        assert len(decisions) == 3
        assert "rejected\talice" in decisions[1]
        assert "accepted\talice" in decisions[2]
        tab.page.screenshot(path=str(folder / "review-queue-decided-desktop.png"), full_page=True)

        tab.page.goto(f"{url}/runs/{first}/")
        assert "accepted by alice at" in tab.page.inner_text("main")

        # Expected: mallory's 403 (and its console line), and the /favicon.ico Chromium asks of the pages without an
        # icon link (the fake GitHub's, the plain-text refusal).
        expected = (f"{url}/auth/callback", f"{github_server.base_url}/favicon.ico", f"{url}/favicon.ico")
        problems = [problem for problem in tab.take() if not any(known in problem for known in expected)]
        assert problems == []
    finally:
        context.close()

    engine = make_engine(database_url)
    try:
        assert held_runs(engine) == []
        assert (get_run(engine, first) or {})["accepted"] is True
        assert (get_run(engine, second) or {})["accepted"] is False
        park_latest = [run["id"] for run in latest_runs(engine) if run["source_path"] == PARK]
        assert park_latest == [first]
    finally:
        engine.dispose()
    assert first_warning != second_warning
