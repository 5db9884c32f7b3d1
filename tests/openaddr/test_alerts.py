"""Alerting's rules (openaddr/alerts.py, openaddr/db/alerts.py) on a real Machine database, SQLite and PostgreSQL.

Runs are recorded with the library's own ``create_set`` / ``insert_run``; the channel is a :class:`Collected` list
here (the real notifiers, SMTP and Slack on loopback, are ``tests/plugins/test_alert_notifiers.py``'s).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr import alerts
from openaddr.db import alerts as db_alerts
from openaddr.db.jobs import complete_set, create_set
from openaddr.db.runs import insert_run

if TYPE_CHECKING:
    from collections.abc import Sequence

NOW = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)
OK_STATE = {"cache": "cache.zip", "sample": "sample.json", "processed": "out.zip", "address count": 1000}
FAILED_STATE = {"cache": "cache.zip", "source problem": "Could not download source data"}


class Collected:
    """A channel that keeps what it is given."""

    def __init__(self, channels: Sequence[str] = ("email",), subscribers_off: str | None = None) -> None:
        self.channels = list(channels)
        self.subscribers_off = subscribers_off
        self.maintainers: list[alerts.Message] = []
        self.subscribers: list[alerts.Message] = []

    def to_maintainers(self, message: alerts.Message) -> list[str]:
        self.maintainers.append(message)
        return list(self.channels)

    def to_subscriber(self, message: alerts.Message) -> None:
        self.subscribers.append(message)


def new_set(db: sa.Connection, when: dt.datetime, run_id: str | None = None) -> int:
    set_id = create_set(db, owner="openaddresses", repository="openaddresses", commit_sha="c" * 40, now=when)
    if run_id is not None:
        db.execute(
            sa.text("UPDATE sets SET airflow_dag_run_id = :r WHERE id = :i"), {"r": run_id, "i": set_id}
        )
    return set_id


def record(
    db: sa.Connection,
    when: dt.datetime,
    path: str,
    *,
    ok: bool,
    set_id: int | None = None,
    warning: str | None = None,
    name: str = "primary",
) -> int:
    if set_id is None:
        set_id = new_set(db, when)
    return insert_run(
        db,
        source_path=path,
        source_layer="addresses",
        layer_name=name,
        set_id=set_id,
        is_merged=True,
        state=OK_STATE if ok else FAILED_STATE,
        warning=warning,
        started=when,
        now=when,
    )


def days(n: float) -> dt.datetime:
    return NOW - dt.timedelta(days=n)


def test_set_summary_counts_and_new_failures(db: sa.Connection) -> None:
    earlier = new_set(db, days(1))
    for path, ok in (("sources/a.json", True), ("sources/b.json", False), ("sources/c.json", True)):
        record(db, days(1), path, ok=ok, set_id=earlier)
    complete_set(db, earlier, now=days(0.9))
    current = new_set(db, days(0.2))
    record(db, days(0.2), "sources/a.json", ok=True, set_id=current)
    record(db, days(0.2), "sources/b.json", ok=False, set_id=current)  # failed before too: not new
    newly = record(db, days(0.2), "sources/c.json", ok=False, set_id=current)  # succeeded before: new
    record(db, days(0.2), "sources/d.json", ok=True, set_id=current, warning="Address count dropped 50 %")
    first = record(db, days(0.2), "sources/<e>|{{x}}.json", ok=False, set_id=current)  # no previous run: new
    complete_set(db, current, now=days(0.1))

    outcome = db_alerts.set_outcome(db, current)
    assert {k: outcome[k] for k in ("success", "failure", "warning", "skipped", "pending")} == {
        "success": 1,
        "failure": 3,
        "warning": 1,
        "skipped": 0,
        "pending": 0,
    }
    assert [f["id"] for f in outcome["new_failures"]] == [first, newly]

    sender = Collected(channels=[])
    result = alerts.alert_set_complete(db, current, sender, base_url="https://results.example", now=NOW)
    assert result["alerts"] == "off"
    assert result["new_failures"] == 2
    assert result["summary"].startswith("Alerts are off: no alert connection is configured")
    assert "Failures: 3\nWarnings (held for review): 1" in result["summary"]
    assert "sources/c.json addresses/primary: Could not download source data" in result["summary"]
    assert f"https://results.example/sets/{current}/" in result["summary"]
    assert sender.maintainers == []
    status = alerts.alerting_status(db_alerts.latest_alert(db))
    assert status["state"] == "off"
    assert status["text"].startswith("Alerts are off")

    # A retried task does not send the summary twice.
    again = alerts.alert_set_complete(db, current, Collected(), base_url=None, now=NOW)
    assert again["alerts"] == "already"


def test_a_broken_entry_is_told_once_per_breakage(db: sa.Connection) -> None:
    last_success = record(db, days(10), "sources/broken.json", ok=True)
    record(db, days(8), "sources/broken.json", ok=False)
    record(db, days(1), "sources/broken.json", ok=False)
    record(db, days(9), "sources/never.json", ok=False)
    record(db, days(3), "sources/recent.json", ok=False)  # first run 3 days ago: not yet
    record(db, days(20), "sources/fine.json", ok=True)
    record(db, days(1), "sources/fine.json", ok=True)
    held_success = record(db, days(12), "sources/held.json", ok=True)
    record(db, days(1), "sources/held.json", ok=True, warning="Address count dropped 50 %")  # not accepted

    sender = Collected(channels=["email", "slack"])
    counts = alerts.alert_broken_entries(db, sender, base_url="https://results.example", now=NOW)
    assert counts == {"sent": 3, "off": 0, "already": 0}
    texts = {m.key: m for m in sender.maintainers}
    assert set(texts) == {
        f"sources/broken.json|addresses|primary|run {last_success}",
        "sources/never.json|addresses|primary|never",
        f"sources/held.json|addresses|primary|run {held_success}",
    }
    broken = next(m for m in sender.maintainers if "broken.json" in m.key)
    assert (
        broken.subject
        == "[OpenAddresses Machine] sources/broken.json addresses/primary: no success for 10 days"
    )
    assert "Its latest run" in broken.text
    assert "Could not download source data" in broken.text
    assert "https://results.example/sources/broken" in broken.text

    # Nightly: nothing new is sent.
    again = Collected(channels=["email"])
    assert alerts.alert_broken_entries(db, again, base_url=None, now=NOW + dt.timedelta(days=1)) == {
        "sent": 0,
        "off": 0,
        "already": 3,
    }
    assert again.maintainers == []

    # It recovers, then breaks again for more than 7 days: that is a new breakage, told once more.
    record(db, NOW + dt.timedelta(days=1), "sources/broken.json", ok=True)
    record(db, NOW + dt.timedelta(days=2), "sources/broken.json", ok=False)
    later = Collected(channels=["email"])
    counts = alerts.alert_broken_entries(db, later, base_url=None, now=NOW + dt.timedelta(days=9))
    # (recent.json's first run is now 12 days old: its first alert.)
    assert [m.key.split("|")[0] for m in later.maintainers] == ["sources/broken.json", "sources/recent.json"]
    assert counts["already"] == 2  # never.json and held.json were told before


def test_stalled_scheduled_sets_are_told_once(db: sa.Connection) -> None:
    stalled = new_set(db, NOW - dt.timedelta(hours=25), "scheduled__2026-12-06T00:00:00+00:00")
    new_set(db, NOW - dt.timedelta(hours=25), "manual__2026-12-06T00:00:00+00:00")  # not scheduled
    new_set(db, NOW - dt.timedelta(hours=23), "scheduled__2026-12-07T00:00:00+00:00")  # not 24 hours yet
    done = new_set(db, NOW - dt.timedelta(hours=30), "scheduled__2026-12-05T00:00:00+00:00")
    complete_set(db, done, now=NOW - dt.timedelta(hours=20))

    sender = Collected()
    assert alerts.alert_stalled_sets(db, sender, base_url=None, now=NOW) == {
        "sent": 1,
        "off": 0,
        "already": 0,
    }
    (message,) = sender.maintainers
    assert message.key == str(stalled)
    assert message.subject == f"[OpenAddresses Machine] Set {stalled} has not completed after 25 hours"
    assert alerts.alert_stalled_sets(db, sender, base_url=None, now=NOW)["already"] == 1
    assert len(sender.maintainers) == 1


def test_record_alert_is_unique_per_kind_and_key(db: sa.Connection) -> None:
    assert db_alerts.record_alert(db, "failed_run", "d/r", channels=["slack"], subject="s", now=NOW)
    assert not db_alerts.record_alert(db, "failed_run", "d/r", channels=["slack"], subject="s", now=NOW)
    assert db_alerts.record_alert(db, "stalled_set", "d/r", channels=[], subject="s", now=NOW)
    status = alerts.alerting_status(db_alerts.latest_alert(db))
    assert status["state"] == "off"


@pytest.mark.parametrize(
    ("run_type", "alerted"),
    [
        ("scheduled", True),
        ("asset_triggered", True),
        ("DagRunType.SCHEDULED", True),
        ("manual", False),
        ("", False),
    ],
)
def test_only_scheduled_runs_failing_are_alerts(run_type: str, alerted: bool) -> None:
    message = alerts.failed_run_message(
        dag_id="openaddr_batch",
        run_id="scheduled__2026-12-07",
        run_type=run_type,
        ui_url="http://airflow:8080/",
    )
    assert (message is not None) == alerted
    if message is not None:
        assert message.key == "openaddr_batch/scheduled__2026-12-07"
        assert "http://airflow:8080/dags/openaddr_batch/runs/scheduled__2026-12-07" in message.text


def test_hostile_text_is_escaped_in_html_and_slack() -> None:
    message = alerts.Message(
        "set_summary", "1", "s", '<script>alert(1)</script> & "x"\n\nhttps://a.example/?q=<b>'
    )
    assert message.html == (
        "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;</p>"
        '<p><a href="https://a.example/?q=">https://a.example/?q=</a>&lt;b&gt;</p>'
    )
    assert alerts.slack_text("<!channel> & <http://x|y>") == "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("someone@example.org", None),
        ("  someone@example.org ", None),
        ("", "Give an e-mail address"),
        ("someone", "is not an e-mail address"),
        ("a@b", "is not an e-mail address"),
        ("a b@example.org", "is not an e-mail address"),
        ("a@example.org, b@example.org", "is not an e-mail address"),
        ("x" * 250 + "@example.org", "at most 254"),
    ],
)
def test_check_email(value: str, error: str | None) -> None:
    if error is None:
        assert alerts.check_email(value) == value.strip()
    else:
        with pytest.raises(alerts.InvalidEmail, match=error):
            alerts.check_email(value)


def sub(told: bool | None, path: str = "sources/a.json") -> dict[str, Any]:
    return {"id": 1, "source_path": path, "broken": told, "email": "a@example.org", "token": "t"}


@pytest.mark.parametrize(
    ("told", "state", "change"),
    [
        (False, True, True),
        (True, False, False),
        (False, False, None),
        (True, True, None),
        (None, True, True),
        (None, False, None),
    ],
)
def test_subscriber_changes(told: bool | None, state: bool, change: bool | None) -> None:
    found = alerts.subscriber_changes([sub(told)], {"sources/a.json": state})
    assert found == ([] if change is None else [(sub(told), state)])
    assert alerts.subscriber_changes([sub(told, "sources/unknown.json")], {"sources/a.json": state}) == []


def test_a_source_is_broken_when_an_entry_last_failed_or_was_rejected(db: sa.Connection) -> None:
    record(db, days(2), "sources/two.json", ok=True, name="a")
    record(db, days(2), "sources/two.json", ok=True, name="b")
    record(db, days(1), "sources/two.json", ok=False, name="b")  # one entry of two failed: broken
    record(db, days(2), "sources/held.json", ok=True)
    record(
        db, days(1), "sources/held.json", ok=True, warning="Address count dropped 50 %"
    )  # held: not broken
    rejected = record(db, days(1), "sources/rejected.json", ok=True, warning="Address count dropped 50 %")
    db.execute(sa.text("UPDATE runs SET accepted = false WHERE id = :i"), {"i": rejected})
    record(db, days(2), "sources/fixed.json", ok=False)
    record(db, days(1), "sources/fixed.json", ok=True)
    unmerged = insert_run(
        db,
        source_path="sources/fixed.json",
        source_layer="addresses",
        layer_name="primary",
        is_merged=False,  # a pull request's failure: not the source's state
        state=FAILED_STATE,
        now=days(0.5),
    )
    assert unmerged > 0
    paths = [
        "sources/two.json",
        "sources/held.json",
        "sources/rejected.json",
        "sources/fixed.json",
        "sources/no.json",
    ]
    assert db_alerts.source_broken(db, paths) == {
        "sources/two.json": True,
        "sources/held.json": False,
        "sources/rejected.json": True,
        "sources/fixed.json": False,
    }
