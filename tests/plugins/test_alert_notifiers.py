"""The alerts' notifiers (plugins/openaddr_airflow/alerts.py) against a local SMTP server (aiosmtpd) and a
loopback HTTP endpoint standing in for Slack's incoming webhook: the messages are received and parsed.

The connections are given as ``AIRFLOW_CONN_*`` environment variables, as in production; the SMTP and Slack
providers' own notifiers and hooks do the sending.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import pytest

from openaddr import alerts
from openaddr.db import make_engine
from openaddr.db.alerts import latest_alert
from openaddr.db.runs import insert_run
from openaddr_airflow.alerts import SLACK_CONN_ID, SMTP_CONN_ID, FailedRunNotifier, NotifierSender

if TYPE_CHECKING:
    from collections.abc import Iterator

    import sqlalchemy as sa
    from airflow.dag_processing.dagbag import DagBag

    from tests.servers import LoopbackHTTPServer
    from tests.smtp_server import LocalSMTPServer

SLACK_PATH = "/services/T000/B000/alerts"
HOSTILE = "sources/us/<b>x</b>/{{ 7 * 7 }}.json"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict[str, object]) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


@pytest.fixture
def slack(http_server: LoopbackHTTPServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackHTTPServer:
    """The loopback Slack webhook (answers ``ok`` like Slack's), configured as ``openaddr_alerts_slack``."""
    http_server.add(SLACK_PATH, b"ok", content_type="text/html")
    set_connection(
        monkeypatch,
        SLACK_CONN_ID,
        {"conn_type": "slackwebhook", "host": http_server.url("/services"), "password": "T000/B000/alerts"},
    )
    return http_server


@pytest.fixture
def engine(db_url: sa.URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    """The Machine database of the test, as ``openaddr_machine_db``."""
    from tests.airflow_fixtures import connection_json

    monkeypatch.setenv("AIRFLOW_CONN_OPENADDR_MACHINE_DB", connection_json(db_url))
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def slack_posts(server: LoopbackHTTPServer) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in server.requests if r.path == SLACK_PATH and r.body]


def test_no_connection_means_alerts_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}", raising=False)
    monkeypatch.delenv(f"AIRFLOW_CONN_{SLACK_CONN_ID.upper()}", raising=False)
    sender = NotifierSender()
    assert sender.channels == []
    assert sender.subscribers_off == f"connection {SMTP_CONN_ID} is not defined"


def test_an_alert_reaches_smtp_and_slack(
    smtp: LocalSMTPServer, slack: LoopbackHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, SMTP_CONN_ID, smtp.connection(to="one@example.org, two@example.org"))
    before = len(slack_posts(slack))
    sender = NotifierSender()
    assert sender.channels == ["email", "slack"]
    message = alerts.Message(
        "broken_entry", "k", f"[OpenAddresses Machine] {HOSTILE}: no success", f"{HOSTILE} <!channel> & more"
    )
    assert sender.to_maintainers(message) == ["email", "slack"]

    (mail,) = smtp.received
    assert mail.rcpt_tos == ["one@example.org", "two@example.org"]
    assert mail.message["Subject"] == f"[OpenAddresses Machine] {HOSTILE}: no success"
    # The text stays text: no Jinja rendering ({{ 7 * 7 }} is not 49), HTML escaped.
    assert "{{ 7 * 7 }}" in mail.html()
    assert "&lt;b&gt;x&lt;/b&gt;" in mail.html()
    assert "<b>" not in mail.html()
    posts = slack_posts(slack)[before:]
    assert len(posts) == 1
    assert posts[0]["text"] == (
        "*[OpenAddresses Machine] sources/us/&lt;b&gt;x&lt;/b&gt;/{{ 7 * 7 }}.json: no success*\n"
        "sources/us/&lt;b&gt;x&lt;/b&gt;/{{ 7 * 7 }}.json &lt;!channel&gt; &amp; more"
    )


def test_a_subscriber_message_carries_one_click_unsubscribe(
    smtp: LocalSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, SMTP_CONN_ID, smtp.connection())  # no maintainers: subscribers only
    monkeypatch.delenv(f"AIRFLOW_CONN_{SLACK_CONN_ID.upper()}", raising=False)
    sender = NotifierSender()
    assert sender.channels == []
    assert sender.subscribers_off is None
    subscription = {
        "id": 3,
        "source_path": "sources/us/wy/park.json",
        "email": "a@example.org",
        "token": "tok",
    }
    sender.to_subscriber(
        alerts.subscriber_message(subscription, broken=True, base_url="https://results.example")
    )

    (mail,) = smtp.received
    assert mail.rcpt_tos == ["a@example.org"]
    assert mail.message["Subject"] == "OpenAddresses source sources/us/wy/park.json is broken"
    assert mail.message["List-Unsubscribe"] == "<https://results.example/subscriptions/tok/unsubscribe>"
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert 'href="https://results.example/subscriptions/tok/unsubscribe"' in mail.html()
    assert 'href="https://results.example/sources/us/wy/park"' in mail.html()


def test_the_seven_day_alert_is_mailed_once(
    smtp: LocalSMTPServer, engine: sa.Engine, machine_dags: DagBag, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, SMTP_CONN_ID, smtp.connection(to="maintainers@example.org"))
    monkeypatch.delenv(f"AIRFLOW_CONN_{SLACK_CONN_ID.upper()}", raising=False)
    now = dt.datetime.now(dt.UTC)
    for days, ok in ((9, True), (8, False), (1, False)):
        insert_run(
            engine,
            source_path="sources/us/wy/park.json",
            source_layer="addresses",
            layer_name="county",
            is_merged=True,
            state={"cache": "c", "sample": "s", "processed": "p"} if ok else {"cache": "c"},
            now=now - dt.timedelta(days=days),
        )
    task = machine_dags.dags["openaddr_alert_broken_sources"].get_task("alert_broken_entries")
    for night in range(2):
        counts = task.python_callable()
        assert counts == (
            {"sent": 1, "off": 0, "already": 0} if night == 0 else {"sent": 0, "off": 0, "already": 1}
        )
    (mail,) = smtp.received
    assert mail.message["Subject"] == (
        "[OpenAddresses Machine] sources/us/wy/park.json addresses/county: no success for 9 days"
    )
    assert "This is sent once" in mail.html()
    recorded = latest_alert(engine)
    assert recorded is not None
    assert (recorded["kind"], recorded["channels"]) == ("broken_entry", "email")


def test_a_failed_scheduled_run_is_alerted_once(
    smtp: LocalSMTPServer, slack: LoopbackHTTPServer, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, SMTP_CONN_ID, smtp.connection(to="maintainers@example.org"))
    before = len(slack_posts(slack))
    from airflow.sdk import DAG
    from airflow.sdk.api.datamodels._generated import DagRun, DagRunType

    logical = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    run_id = "scheduled__2026-12-07T00:00:00+00:00"
    run = DagRun.model_construct(
        dag_id="openaddr_batch", run_id=run_id, run_type=DagRunType.SCHEDULED, logical_date=logical
    )
    dag = DAG(dag_id="openaddr_batch", schedule=None)
    notifier = FailedRunNotifier()
    # The dag-processor's two context shapes: with the DAG run, and the minimal one (DAG, run id, reason).
    notifier({"dag": dag, "dag_run": run, "run_id": run_id, "reason": "task_failure"})
    notifier({"dag": dag, "run_id": run_id, "reason": "task_failure"})  # the same run: not again
    notifier({"dag": dag, "run_id": "manual__2026-12-07T01:00:00+00:00", "reason": "task_failure"})  # manual
    notifier({"dag": dag, "run_id": "asset_triggered__2026-12-07T02:00:00+00:00", "reason": "timed_out"})
    first, second = smtp.received
    assert second.message["Subject"] == "[OpenAddresses Machine] openaddr_batch failed"
    assert "asset_triggered__2026-12-07T02:00:00+00:00" in second.html()
    mail = first
    assert mail.message["Subject"] == "[OpenAddresses Machine] openaddr_batch failed"
    assert (
        "The scheduled DAG run scheduled__2026-12-07T00:00:00+00:00 of openaddr_batch failed." in mail.html()
    )
    assert "Logical date: 2026-12-07T00:00:00+00:00. Reason: task_failure." in mail.html()
    assert len(slack_posts(slack)) == before + 2
