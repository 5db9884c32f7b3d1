"""Subscriptions to a source (webhook/subscriptions.py) through Flask's test client, on SQLite and PostgreSQL:
subscribe → confirmation mail (received by a local SMTP server) → confirm → the source breaks and the Airflow
side's notifier mails the subscriber → one-click unsubscribe (RFC 8058) from the mail's header."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from openaddr.alerts import alert_subscribers
from openaddr.db import upgrade
from openaddr.db.alerts import get_subscription, record_alert
from openaddr.db.runs import insert_run, utcnow
from openaddr_airflow.alerts import SLACK_CONN_ID, SMTP_CONN_ID, NotifierSender
from tests.db_fixtures import BACKENDS, create_database, drop_database
from webhook import create_app
from webhook.db import close_engine, get_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flask import Flask

    from tests.smtp_server import LocalSMTPServer

SITE = "http://results.example"
PARK = "sources/us/wy/park.json"
OK_STATE = {"cache": "cache.zip", "sample": "sample.json", "processed": "out.zip", "address count": 10}


@pytest.fixture(params=BACKENDS)
def own_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.URL]:
    """A migrated database of this test alone (SQLite copy, or a new PostgreSQL database dropped afterwards)."""
    if request.param == "sqlite":
        path = tmp_path / "machine.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield sa.make_url(f"sqlite:///{path}")
        return
    admin_url: sa.URL = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(admin_url, url)


def make_site(url: sa.URL, **config: object) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "DATABASE_URL": url.render_as_string(hide_password=False),
            "BASE_URL": SITE,
            **config,
        }
    )


@pytest.fixture
def site(own_db_url: sa.URL, smtp: LocalSMTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_EMBEDDED"):
        monkeypatch.delenv(key, raising=False)
    app = make_site(own_db_url, SECRET_KEY="test-secret", SMTP_URL=smtp.url())
    yield app
    close_engine(app)


def record(engine: sa.Engine, *, ok: bool, hours_ago: float) -> int:
    return insert_run(
        engine,
        source_path=PARK,
        source_layer="addresses",
        layer_name="county",
        is_merged=True,
        state=OK_STATE if ok else {"cache": "cache.zip"},
        now=utcnow() - dt.timedelta(hours=hours_ago),
    )


def path_of(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == SITE, url
    return parts.path


def test_subscribe_confirm_alert_unsubscribe(
    site: Flask, smtp: LocalSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = get_engine(site)
    record(engine, ok=True, hours_ago=5)
    client = site.test_client()
    page = client.get("/sources/us/wy/park").get_data(as_text=True)
    assert 'action="/subscriptions"' in page
    assert '<input type="hidden" name="source" value="us/wy/park">' in page

    answer = client.post("/subscriptions", data={"source": "us/wy/park", "email": " reader@example.org "})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert "Check your inbox" in answer.get_data(as_text=True)
    again = client.post("/subscriptions", data={"source": "us/wy/park", "email": "reader@example.org"})
    assert again.status_code == 200
    assert "A confirmation link went to reader@example.org at " in again.get_data(as_text=True)
    (confirmation,) = smtp.received  # posted twice: mailed once
    assert confirmation.rcpt_tos == ["reader@example.org"]
    assert confirmation.message["Subject"] == f"Confirm your subscription to {PARK}"
    (confirm_url,) = re.findall(r'href="([^"]*/subscriptions/confirm/[^"]*)"', confirmation.html())
    subscription_id = 1
    assert get_subscription(engine, subscription_id)["datetime_confirmed"] is None  # type: ignore[index]

    # Nothing is sent before confirmation, and an altered link confirms nothing.
    monkeypatch.setenv(f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}", json.dumps(smtp.connection()))
    monkeypatch.delenv(f"AIRFLOW_CONN_{SLACK_CONN_ID.upper()}", raising=False)
    record(engine, ok=False, hours_ago=4)
    assert alert_subscribers(engine, NotifierSender(), base_url=SITE) == {"sent": 0, "failed": 0}
    assert client.get(path_of(confirm_url) + "x").status_code == 400
    record(engine, ok=True, hours_ago=3)

    confirmed = client.get(path_of(confirm_url))
    assert confirmed.status_code == 200
    assert f"reader@example.org will be told when {PARK} breaks or recovers" in confirmed.get_data(
        as_text=True
    )
    subscription = get_subscription(engine, subscription_id)
    assert subscription is not None
    assert subscription["datetime_confirmed"] is not None
    assert subscription["broken"] is False
    assert client.get(path_of(confirm_url)).status_code == 200  # opened twice: still one subscription

    # Unchanged: no message. Then the source breaks: one message, with RFC 8058's headers.
    assert alert_subscribers(engine, NotifierSender(), base_url=SITE) == {"sent": 0, "failed": 0}
    record(engine, ok=False, hours_ago=1)
    assert alert_subscribers(engine, NotifierSender(), base_url=SITE) == {"sent": 1, "failed": 0}
    assert alert_subscribers(engine, NotifierSender(), base_url=SITE) == {"sent": 0, "failed": 0}
    confirmation, broken = smtp.received
    assert broken.message["Subject"] == f"OpenAddresses source {PARK} is broken"
    assert broken.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    (unsubscribe_url,) = re.fullmatch(r"<(.*)>", broken.message["List-Unsubscribe"]).groups()  # type: ignore[union-attr]

    # A GET shows a button and changes nothing; the mail client's one-click POST unsubscribes.
    shown = client.get(path_of(unsubscribe_url))
    assert shown.status_code == 200
    assert f"Stop the messages about {PARK} to reader@example.org?" in shown.get_data(as_text=True)
    assert get_subscription(engine, subscription_id) is not None
    gone = client.post(path_of(unsubscribe_url), data={"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 200
    assert "reader@example.org gets no more messages" in gone.get_data(as_text=True)
    assert get_subscription(engine, subscription_id) is None
    assert client.post(path_of(unsubscribe_url), data={"List-Unsubscribe": "One-Click"}).status_code == 404

    record(engine, ok=True, hours_ago=0)  # recovers: nobody is told any more
    assert alert_subscribers(engine, NotifierSender(), base_url=SITE) == {"sent": 0, "failed": 0}
    assert len(smtp.received) == 2


@pytest.mark.parametrize(
    ("form", "status", "text"),
    [
        ({"source": "us/wy/park", "email": "not-an-address"}, 400, "is not an e-mail address"),
        (
            {"source": "us/wy/nowhere", "email": "reader@example.org"},
            400,
            "us/wy/nowhere has no runs to follow",
        ),
        ({"source": "../../etc", "email": "reader@example.org"}, 400, "has no runs to follow"),
    ],
)
def test_subscribe_refuses_bad_input(
    site: Flask, smtp: LocalSMTPServer, form: dict[str, str], status: int, text: str
) -> None:
    record(get_engine(site), ok=True, hours_ago=1)
    answer = site.test_client().post("/subscriptions", data=form)
    assert answer.status_code == status
    assert text in answer.get_data(as_text=True)
    assert smtp.received == []


def test_without_a_mail_server_subscriptions_and_alerts_say_they_are_off(
    own_db_url: sa.URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (
        "GITHUB_WEBHOOK_SECRETS",
        "OPENADDR_DATABASE_URL",
        "OPENADDR_EMBEDDED",
        "OA_WEBHOOK_SMTP_URL",
    ):
        monkeypatch.delenv(key, raising=False)
    app = make_site(own_db_url, SECRET_KEY="test-secret")
    try:
        engine = get_engine(app)
        record(engine, ok=True, hours_ago=1)
        client = app.test_client()
        page = client.get("/sources/us/wy/park").get_data(as_text=True)
        assert "Subscriptions are off: this site has no mail server configured (OA_WEBHOOK_SMTP_URL)." in page
        assert 'action="/subscriptions"' not in page
        answer = client.post("/subscriptions", data={"source": "us/wy/park", "email": "reader@example.org"})
        assert answer.status_code == 503

        health = client.get("/health/sources").get_data(as_text=True)
        assert "Alerts: not known yet" in health
        record_alert(engine, "set_summary", "1", channels=[], subject="Set 1", now=utcnow())
        health = client.get("/health/sources").get_data(as_text=True)
        assert "Alerts are off: when the Machine last had something to tell (set_summary, " in health
        assert client.get("/health/sources.json").get_json()["alerts"]["state"] == "off"
        record_alert(engine, "set_summary", "2", channels=["email", "slack"], subject="Set 2", now=utcnow())
        health = client.get("/health/sources").get_data(as_text=True)
        assert "Alerts are on: e-mail and Slack (last alert set_summary, " in health
    finally:
        close_engine(app)
