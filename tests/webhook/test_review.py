"""The review queue (machine-ci.md §9.2, §10) with Flask's test client, on SQLite and PostgreSQL: GitHub sign-in
against the fake GitHub's OAuth flow (members only), CSRF, API tokens, decisions recorded with who and when, and what
an accepted or a rejected run changes (latest URLs, collections, health).

Runs are recorded through the library (``insert_run``/``finish_run``/``copy_run``) from a real ``process-one``
state directory of the us-wy-park fixture (``tests/webhook/test_site_sources.py``'s :class:`Recorder`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa

from openaddr.db.collect import collect_runs
from openaddr.db.results import entry_health, latest_runs
from openaddr.db.review import create_token, held_runs, latest_review, token_hash
from openaddr.db.runs import copy_run, get_run
from openaddr.db.schema import api_tokens, run_reviews
from tests.webhook.test_site_sources import (  # noqa: F401 (fixtures)
    SITE,
    Recorder,
    own_db_url,
    park_state,
)
from webhook import ConfigurationError, create_app
from webhook.db import close_engine, get_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flask import Flask
    from flask.testing import FlaskClient

    from tests.github_server import FakeGitHub

ORG = "openaddresses"
CLIENT_ID, CLIENT_SECRET = "Iv1.review-test", "oauth-secret-for-tests"
BASE = "http://localhost"
LATEST = "/latest/run/us/wy/park/addresses/primary.zip"


@pytest.fixture
def app(
    own_db_url: sa.URL,  # noqa: F811
    tmp_path: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_RESULTS", "OPENADDR_EMBEDDED"):
        monkeypatch.delenv(key, raising=False)
    fake_github.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    fake_github.add_user("alice", [ORG, "other"])
    fake_github.add_user("mallory", ["other"])
    folder = tmp_path / "storage"
    folder.mkdir()
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": own_db_url.render_as_string(hide_password=False),
            "FILES_FOLDER": str(folder),
            "RESULTS_PUBLIC_URL": f"{SITE}/files",
            "BASE_URL": BASE,
            "SECRET_KEY": "a test secret key of the review queue",
            "GITHUB_CLIENT_ID": CLIENT_ID,
            "GITHUB_CLIENT_SECRET": CLIENT_SECRET,
            "GITHUB_OAUTH_URL": fake_github.base_url,
            "GITHUB_API_URL": fake_github.base_url,
            "MAINTAINERS_ORG": ORG,
            # The test client speaks http; the default (Secure) is checked on its own below.
            "SESSION_COOKIE_SECURE": False,
        }
    )
    yield app
    close_engine(app)


@pytest.fixture
def recorder(app: Flask, tmp_path: Path, park_state: Path) -> Recorder:  # noqa: F811
    return Recorder(app, tmp_path, park_state)


def sign_in(client: FlaskClient, fake_github: FakeGitHub, login: str) -> tuple[int, str]:
    """The whole web flow: the site's redirect, the fake GitHub's authorize form, the callback. Returns the
    callback's status and text."""
    start = client.get("/auth/login?next=/review/")
    assert start.status_code == 302
    authorize = urlsplit(start.headers["Location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == fake_github.base_url
    assert authorize.path == "/login/oauth/authorize"
    query = {key: values[0] for key, values in parse_qs(authorize.query).items()}
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{BASE}/auth/callback"
    assert query["scope"] == "read:org"
    assert len(query["state"]) >= 40
    form = {
        "login": login,
        "client_id": CLIENT_ID,
        "redirect_uri": query["redirect_uri"],
        "state": query["state"],
    }
    back = requests.post(
        fake_github.url("/login/oauth/authorize"), data=form, allow_redirects=False, timeout=10
    )
    assert back.status_code == 302
    callback = urlsplit(back.headers["Location"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == f"{BASE}/auth/callback"
    answer = client.get(f"{callback.path}?{callback.query}")
    return answer.status_code, answer.get_data(as_text=True)


def csrf_of(html: str) -> str:
    tokens = set(re.findall(r'name="csrf_token" value="([^"]+)"', html))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def held_pair(recorder: Recorder) -> tuple[int, int]:
    """An accepted run of Park (its real count), then a run held by the gate at a third of it."""
    old = recorder.run(recorder.at(1))
    count = get_run(recorder.engine, old)["address_count"]
    held = recorder.run(
        recorder.at(2), count=count // 3, warning=f"Address count dropped 67 % ({count} → {count // 3})"
    )
    return old, held


def latest_target(client: FlaskClient) -> int:
    answer = client.get(LATEST)
    assert answer.status_code == 302
    return int(answer.headers["Location"].split("/runs/")[1].split("/")[0])


def reviews(app: Flask) -> list[tuple[int, str, str, str, int]]:
    with get_engine(app).connect() as connection:
        rows = connection.execute(
            sa.select(
                run_reviews.c.run_id,
                run_reviews.c.decision,
                run_reviews.c.reviewer,
                run_reviews.c.reviewer_kind,
                run_reviews.c.decided_run_id,
            ).order_by(run_reviews.c.id)
        ).all()
    return [tuple(row) for row in rows]


def test_sign_in_is_for_members_of_the_organisation(
    app: Flask, fake_github: FakeGitHub, recorder: Recorder
) -> None:
    _, held = held_pair(recorder)
    client = app.test_client()
    page = client.get("/review/").get_data(as_text=True)
    assert "Sign in with GitHub" in page
    assert "Accept run" not in page

    status, text = sign_in(client, fake_github, "mallory")
    assert (status, text) == (
        403,
        f"mallory is not a member of the GitHub organisation {ORG}: only its members review runs",
    )
    page = client.get("/review/").get_data(as_text=True)
    assert "Signed in as" not in page
    assert "Accept run" not in page
    # The membership was asked with the token GitHub gave for mallory's code.
    asked = [request for request in fake_github.requests if request.path == f"/user/memberships/orgs/{ORG}"]
    assert len(asked) == 1
    assert asked[0].headers["Authorization"].startswith("Bearer gho_fake_")

    status, _ = sign_in(client, fake_github, "alice")
    assert status == 303
    answer = client.get("/review/")
    assert answer.headers["Cache-Control"] == "no-store"
    page = answer.get_data(as_text=True)
    assert "Signed in as <strong>alice</strong>" in page
    assert f'action="/runs/{held}/accept"' in page
    assert f'action="/runs/{held}/reject"' in page

    # Sign out (a form, with its CSRF token): the forms go.
    assert client.post("/auth/logout", data={"csrf_token": csrf_of(page)}).status_code == 303
    assert "Accept run" not in client.get("/review/").get_data(as_text=True)


def test_a_callback_with_another_state_or_a_used_code_is_refused(app: Flask, fake_github: FakeGitHub) -> None:
    client = app.test_client()
    assert client.get("/auth/callback?code=x&state=forged").status_code == 400  # no sign-in started
    start = client.get("/auth/login")
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    answer = client.get("/auth/callback?code=x&state=" + state[:-1] + ("A" if state[-1] != "A" else "B"))
    assert answer.status_code == 400
    assert "state does not match" in answer.get_data(as_text=True)

    start = client.get("/auth/login")
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    answer = client.get(f"/auth/callback?code=never-issued&state={state}")
    assert answer.status_code == 400
    assert (
        answer.get_data(as_text=True)
        == "Sign-in failed: GitHub refused the code (The code passed is incorrect or expired.)"
    )

    # An open redirect through ?next= is not possible.
    start = client.get("/auth/login?next=//evil.example/")
    with client.session_transaction() as session:
        assert session["oauth_next"] == "/review/"


def test_forms_without_their_csrf_token_are_400(
    app: Flask, fake_github: FakeGitHub, recorder: Recorder
) -> None:
    _, held = held_pair(recorder)
    client = app.test_client()
    assert sign_in(client, fake_github, "alice")[0] == 303
    token = csrf_of(client.get("/review/").get_data(as_text=True))

    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-2]}):
        answer = client.post(f"/runs/{held}/accept", data=data)
        assert answer.status_code == 400, data
        assert "CSRF" in answer.get_data(as_text=True)
    assert client.post("/auth/logout").status_code == 400
    assert [run["id"] for run in held_runs(get_engine(app))] == [held]
    assert reviews(app) == []

    # Not signed in: no form; a post without a token is 400 as well.
    assert app.test_client().post(f"/runs/{held}/reject", data={}).status_code == 400

    answer = client.post(f"/runs/{held}/reject", data={"csrf_token": token})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/review/")
    assert reviews(app) == [(held, "rejected", "alice", "github", held)]


def test_decisions_are_recorded_and_move_latest_collections_and_health(
    app: Flask, fake_github: FakeGitHub, recorder: Recorder
) -> None:
    old, held = held_pair(recorder)
    client = app.test_client()
    engine = get_engine(app)
    assert latest_target(client) == old
    assert [run["id"] for run in collect_runs(engine, get_run(engine, held)["set_id"])] == [old]
    health = entry_health(engine)
    assert [(item["health"], item["last_run"]["id"], item["last_run"]["label"]) for item in health] == [
        ("healthy", held, "warning")
    ]

    # The queue shows the warning, both counts, the change, the preview and the links.
    page = client.get("/review/").get_data(as_text=True)
    count = get_run(engine, old)["address_count"]
    assert "Address count dropped 67 %" in page
    assert f"{count // 3:,}" in page
    assert f"{count:,}" in page
    assert f'href="/runs/{old}/">run {old}</a>' in page
    assert f"{(count // 3 - count) * 100 / count:+.1f} %" in page
    assert f'<img src="{SITE}/files/runs/{held}/preview.png"' in page
    assert client.get("/review/held.json").get_json()["held"][0]["previous_count"] == count

    assert sign_in(client, fake_github, "alice")[0] == 303
    token = csrf_of(client.get("/review/").get_data(as_text=True))
    assert client.post(f"/runs/{held}/accept", data={"csrf_token": token}).status_code == 303
    ((run_id, decision, reviewer, kind, decided_on),) = reviews(app)
    assert (run_id, decision, reviewer, kind, decided_on) == (held, "accepted", "alice", "github", held)
    assert get_run(engine, held)["accepted"] is True
    assert latest_target(client) == held
    assert [run["id"] for run in collect_runs(engine, get_run(engine, held)["set_id"])] == [held]
    assert [run["id"] for run in latest_runs(engine)] == [held]
    page = client.get("/review/").get_data(as_text=True)
    assert "No run is held for review." in page
    assert "alice" in page
    assert ">accepted<" in page
    answer = client.get(f"/runs/{held}/")
    run_page = answer.get_data(as_text=True)
    # Its Last-Modified is the decision's (a cached "held" page is not answered 304).
    decided_at = (latest_review(engine, held) or {})["decided_at"]
    assert decided_at > get_run(engine, held)["datetime_tz"]
    assert answer.last_modified == decided_at.replace(microsecond=0)
    assert re.search(
        r"accepted by alice at <time datetime=\"[^\"]+\">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>", run_page
    )

    # A second decision on it is refused, and changes nothing.
    answer = client.post(f"/runs/{held}/reject", data={"csrf_token": token})
    assert answer.status_code == 409
    assert answer.get_data(as_text=True).startswith(f"Run {held} was already accepted by alice at ")

    # A newer held run, rejected: latest stays, it counts as failed.
    newer = recorder.run(recorder.at(3), count=1, warning="Address count dropped 99 %")
    assert client.post(f"/runs/{newer}/reject", data={"csrf_token": token}).status_code == 303
    assert latest_target(client) == held
    assert get_run(engine, newer)["accepted"] is False
    assert [
        (item["health"], item["last_run"]["id"], item["last_run"]["label"]) for item in entry_health(engine)
    ] == [("healthy", newer, "failure")]
    assert [run["id"] for run in collect_runs(engine, get_run(engine, newer)["set_id"])] == [held]
    assert client.post(f"/runs/{old}/accept", data={"csrf_token": token}).status_code == 409  # no warning
    assert client.post("/runs/999999/accept", data={"csrf_token": token}).status_code == 404


def test_api_tokens_from_the_command_line(app: Flask, recorder: Recorder) -> None:
    _, held = held_pair(recorder)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["review-token", "create", "nightly-check"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    assert token.startswith("oam_")
    assert len(token) > 40
    with get_engine(app).connect() as connection:
        stored = connection.execute(sa.select(api_tokens.c.name, api_tokens.c.token_sha256)).all()
    assert [tuple(row) for row in stored] == [
        ("nightly-check", token_hash(token))
    ]  # the hash, never the token
    assert runner.invoke(args=["review-token", "create", "nightly-check"]).exit_code == 1
    assert runner.invoke(args=["review-token", "create", "no spaces"]).exit_code == 1

    client = app.test_client()
    for header in (f"Bearer {token}x", "Bearer ", f"Basic {token}", "Bearer oam_unknown"):
        answer = client.post(f"/runs/{held}/accept", headers={"Authorization": header})
        assert answer.status_code == 401, header
    answer = client.post(f"/runs/{held}/accept", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.get_json() == {
        "run": held,
        "decision": "accepted",
        "reviewer": "nightly-check",
        "reviewer_kind": "token",
        "runs": [held],
    }
    assert reviews(app) == [(held, "accepted", "nightly-check", "token", held)]
    answer = client.post(f"/runs/{held}/reject", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 409
    assert answer.get_json()["error"].startswith(f"Run {held} was already accepted by nightly-check")

    assert runner.invoke(args=["review-token", "revoke", "nightly-check"]).exit_code == 0
    other = recorder.run(recorder.at(3), count=1, warning="Address count dropped 99 %")
    assert (
        client.post(f"/runs/{other}/reject", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )
    assert get_run(get_engine(app), other)["accepted"] is None


def test_a_decision_covers_the_copies_of_the_same_output(app: Flask, recorder: Recorder) -> None:
    old, held = held_pair(recorder)
    engine = get_engine(app)
    later_set = recorder.new_set(recorder.at(4))
    copy = copy_run(engine, held, set_id=later_set, now=recorder.at(4))
    assert {run["id"] for run in held_runs(engine)} == {held, copy}
    assert latest_target(app.test_client()) == old
    token = create_token(engine, "script")
    answer = app.test_client().post(f"/runs/{copy}/accept", headers={"Authorization": f"Bearer {token}"})
    assert answer.get_json()["runs"] == [copy, held]
    assert reviews(app) == [
        (copy, "accepted", "script", "token", copy),
        (held, "accepted", "script", "token", copy),
    ]
    assert held_runs(engine) == []
    assert [run["id"] for run in latest_runs(engine)] == [copy]
    assert latest_target(app.test_client()) == held  # a copy's files are its original's


def test_session_cookie_defaults_and_configuration_errors(
    own_db_url: sa.URL,  # noqa: F811
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_EMBEDDED"):
        monkeypatch.delenv(key, raising=False)
    url = own_db_url.render_as_string(hide_password=False)
    settings = {
        "TESTING": True,
        "DATABASE_URL": url,
        "GITHUB_CLIENT_ID": CLIENT_ID,
        "GITHUB_CLIENT_SECRET": "s",
    }
    with pytest.raises(ConfigurationError, match="OA_WEBHOOK_SECRET_KEY is not"):
        create_app(settings)
    app = create_app({**settings, "SECRET_KEY": "k", "GITHUB_OAUTH_URL": fake_github.base_url})
    answer = app.test_client().get("/auth/login")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("oa_session=")
    assert "; Secure" in cookie
    assert "; HttpOnly" in cookie
    assert "; SameSite=Lax" in cookie
    close_engine(app)

    bare = create_app({"TESTING": True, "DATABASE_URL": url})
    client = bare.test_client()
    answer = client.get("/auth/login")
    assert (answer.status_code, answer.get_data(as_text=True)) == (
        503,
        "GitHub sign-in is not configured: set OA_WEBHOOK_SECRET_KEY, OA_WEBHOOK_GITHUB_CLIENT_ID, "
        "OA_WEBHOOK_GITHUB_CLIENT_SECRET",
    )
    assert "GitHub sign-in is not configured on this site" in client.get("/review/").get_data(as_text=True)
    assert client.post("/runs/1/accept").status_code == 401
    close_engine(bare)
