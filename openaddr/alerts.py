"""What the Machine tells its maintainers and subscribers, and when (machine-ci.md §11), as plain Python.

Four alerts go to the maintainers' channels (the Airflow side sends them through the SMTP and Slack providers'
notifiers, :mod:`openaddr_airflow.alerts`):

* **failed_run**: a failed *scheduled* DAG run (run type ``scheduled`` or ``asset_triggered``; a manual run has
  someone watching it, and a CI job's failure is its pull request's business);
* **set_summary**: when a set completes, its successes, failures, warnings (runs held by the quality gate) and new
  failures (entries whose previous merged run did not fail);
* **broken_entry**: a layer entry with no accepted success for more than :data:`BROKEN_AFTER` (7 days,
  openaddresses/machine#602): **once** per breakage, its key naming the last success (or ``never``), so it is
  not repeated nightly, and a new breakage after a recovery is told again;
* **stalled_set**: a scheduled set not complete :data:`STALLED_AFTER` (24 hours) after it started
  (openaddresses/openaddresses#6104), once per set.

Each is recorded in the ``alerts`` table (:mod:`openaddr.db.alerts`) with the channels it went to, or none when no
channel is configured: then the set summary says "alerts are off" and so does the health page, never silently.

Subscribers (e-mail, double opt-in on the results site) get a message when a source file they follow **breaks**
(the newest merged run of one of its entries failed or was rejected) or **recovers**. Every message to a
subscriber carries a one-click unsubscribe link and the ``List-Unsubscribe`` / ``List-Unsubscribe-Post``
headers of RFC 8058.

Texts come from strangers (paths, problems, messages): the plain text is sent as it is to Slack (whose mrkdwn
only needs ``&``, ``<`` and ``>`` escaped, :func:`slack_text`), and the HTML of an e-mail is escaped throughout.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
import re
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from openaddr.db import alerts as db

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from openaddr.db.runs import Bind

log = logging.getLogger(__name__)

#: An entry without an accepted success for longer than this is told to the maintainers (once).
BROKEN_AFTER = dt.timedelta(days=7)
#: A scheduled set not complete this long after it started is told to the maintainers (once).
STALLED_AFTER = dt.timedelta(hours=24)
#: DAG run types whose failure is an alert: the schedule's and the asset-triggered collect's.
SCHEDULED_RUN_TYPES = frozenset(("scheduled", "asset_triggered"))
#: Names listed in a message before "and N more".
MAX_LISTED = 20
#: The longest e-mail address accepted (RFC 5321's path limit).
MAX_EMAIL_LENGTH = 254
#: A pragmatic address check: one ``@``, no spaces or angle brackets, a dot in the domain. The double opt-in is
#: the real check: an address that cannot receive mail never confirms.
EMAIL_PATTERN = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\".]+$")
_URL = re.compile(r"https?://[^\s<>\"]+")


class InvalidEmail(ValueError):
    """An address a subscription cannot use; the text says why."""


@dataclasses.dataclass(frozen=True)
class Message:
    """One message: what it is about (``kind``, ``key``), its subject, plain text and HTML, the addresses it goes
    to (none: the maintainers' channels) and extra e-mail headers (``List-Unsubscribe``)."""

    kind: str
    key: str
    subject: str
    text: str
    to: tuple[str, ...] = ()
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def html(self) -> str:
        """The text as HTML: each paragraph a ``<p>``, lines kept, every character escaped, http(s) URLs linked."""
        paragraphs = [part for part in self.text.split("\n\n") if part.strip()]
        return "".join(f"<p>{_linked(part)}</p>" for part in paragraphs)


def _linked(text: str) -> str:
    out = []
    position = 0
    for match in _URL.finditer(text):
        out.append(html.escape(text[position : match.start()]))
        url = html.escape(match.group(0))
        out.append(f'<a href="{url}">{url}</a>')
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out).replace("\n", "<br>")


def slack_text(text: str) -> str:
    """Text for a Slack message: ``&``, ``<`` and ``>`` escaped (Slack's only control characters), so that no
    source name can mention a channel or make a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def check_email(value: str) -> str:
    """A subscriber's address, stripped.

    :raises InvalidEmail: empty, too long, or not shaped like an address
    """
    email = (value or "").strip()
    if not email:
        raise InvalidEmail("Give an e-mail address")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail(f"An e-mail address has at most {MAX_EMAIL_LENGTH} characters")
    if not EMAIL_PATTERN.match(email):
        raise InvalidEmail(f"{email!r} is not an e-mail address")
    return email


def entry_label(path: str | None, layer: str | None, name: str | None) -> str:
    """``sources/us/or/portland.json addresses/city``."""
    return " ".join(part for part in (path or "?", "/".join(p for p in (layer, name) if p)) if part)


def channels_phrase(channels: Sequence[str]) -> str:
    """``e-mail and Slack``, or the sentence saying alerts are off."""
    names = {"email": "e-mail", "slack": "Slack"}
    if not channels:
        return "off"
    return " and ".join(names.get(channel, channel) for channel in channels)


ALERTS_OFF = (
    "Alerts are off: no alert connection is configured (openaddr_alerts_smtp with extra 'to', or "
    "openaddr_alerts_slack), so this was sent nowhere."
)


def _listed(lines: Sequence[str]) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return list(lines)
    return [*lines[:MAX_LISTED], f"… and {len(lines) - MAX_LISTED} more"]


def _site(base_url: str | None, path: str) -> str | None:
    return f"{base_url.rstrip('/')}{path}" if base_url else None


def source_page_url(base_url: str | None, source_path: str) -> str | None:
    """The results site's page of a source file (``/sources/<path below sources/ without .json>``)."""
    name = source_path.removeprefix("sources/").removesuffix(".json")
    return _site(base_url, f"/sources/{quote(name)}")


# ----------------------------------------------------------------------------------------------------------------
# Maintainers' alerts
# ----------------------------------------------------------------------------------------------------------------


def failed_run_message(
    *,
    dag_id: str,
    run_id: str,
    run_type: str | None,
    logical_date: dt.datetime | None = None,
    reason: str | None = None,
    ui_url: str | None = None,
) -> Message | None:
    """The alert of a failed DAG run, or None when its run type is not scheduled (:data:`SCHEDULED_RUN_TYPES`).

    :param reason: why Airflow failed it (the callback's ``reason``, e.g. ``task_failure``)
    :param ui_url: the Airflow UI (its DAG run page is linked)
    """
    if (run_type or "").lower().split(".")[-1] not in SCHEDULED_RUN_TYPES:
        return None
    lines = [f"The scheduled DAG run {run_id} of {dag_id} failed."]
    if logical_date is not None:
        lines.append(f"Logical date: {logical_date.isoformat()}.")
    if reason:
        lines.append(f"Reason: {reason}.")
    text = " ".join(lines)
    if ui_url:
        text += f"\n\n{ui_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    return Message("failed_run", f"{dag_id}/{run_id}", f"[OpenAddresses Machine] {dag_id} failed", text)


def set_summary_message(
    outcome: Mapping[str, Any], *, channels: Sequence[str], base_url: str | None
) -> Message:
    """The summary of a completed set (:func:`openaddr.db.alerts.set_outcome`): counts, then the new failures.

    With no channel configured its first line says that alerts are off (it is logged and recorded, not sent)."""
    found = outcome["set"]
    new_failures = outcome["new_failures"]
    subject = (
        f"[OpenAddresses Machine] Set {found['id']}: {outcome['success']} succeeded, {outcome['failure']} failed, "
        f"{outcome['warning']} held, {len(new_failures)} new failures"
    )
    paragraphs = []
    if not channels:
        paragraphs.append(ALERTS_OFF)
    ended = found.get("datetime_end")
    paragraphs.append(
        f"Set {found['id']} of {found.get('owner')}/{found.get('repository')} at {found.get('commit_sha') or '?'}"
        + (f" completed at {ended.isoformat()}." if ended else " completed.")
    )
    paragraphs.append(
        "\n".join(
            (
                f"Successes: {outcome['success']}",
                f"Failures: {outcome['failure']}",
                f"Warnings (held for review): {outcome['warning']}",
                f"Skipped: {outcome['skipped']}",
                f"New failures: {len(new_failures)}",
            )
        )
    )
    if new_failures:
        lines = [
            f"{entry_label(f['source_path'], f['source_layer'], f['layer_name'])}: "
            f"{f.get('source_problem') or f.get('message') or 'failed'}"
            for f in new_failures
        ]
        paragraphs.append("New failures:\n" + "\n".join(_listed(lines)))
    page = _site(base_url, f"/sets/{found['id']}/")
    if page:
        paragraphs.append(page)
    return Message("set_summary", str(found["id"]), subject, "\n\n".join(paragraphs))


def broken_entry_key(entry: Mapping[str, Any]) -> str:
    """The alert key of a broken entry: the entry and its last success (``never``), so one breakage is told once."""
    success = entry.get("last_success")
    since = f"run {success['id']}" if success else "never"
    return f"{entry['source_path']}|{entry['source_layer'] or ''}|{entry['layer_name'] or ''}|{since}"


def broken_entry_message(entry: Mapping[str, Any], *, now: dt.datetime, base_url: str | None) -> Message:
    """The alert of an entry without an accepted success for more than :data:`BROKEN_AFTER`
    (:func:`openaddr.db.alerts.entries_without_success`)."""
    label = entry_label(entry["source_path"], entry["source_layer"], entry["layer_name"])
    days = (now - entry["since"]).days
    success = entry.get("last_success")
    if success:
        first = f"{label} has had no accepted success for {days} days (last success: run {success['id']}"
        first += f" on {success['datetime'].date().isoformat()})."
    else:
        first = f"{label} has never succeeded; its first run was {days} days ago."
    last = entry["last_run"]
    problem = last.get("source_problem") or last.get("message") or last.get("label")
    paragraphs = [first, f"Its latest run, {last['id']}, says: {problem}"]
    page = source_page_url(base_url, entry["source_path"])
    if page:
        paragraphs.append(page)
    paragraphs.append("This is sent once; the next alert for this entry comes after it has succeeded again.")
    return Message(
        "broken_entry",
        broken_entry_key(entry),
        f"[OpenAddresses Machine] {label}: no success for {days} days",
        "\n\n".join(paragraphs),
    )


def stalled_set_message(found: Mapping[str, Any], *, now: dt.datetime, base_url: str | None) -> Message:
    """The alert of a scheduled set not complete :data:`STALLED_AFTER` after it started."""
    hours = int((now - found["datetime_start"]).total_seconds() // 3600)
    paragraphs = [
        f"Set {found['id']} ({found.get('airflow_dag_run_id')}) started {hours} hours ago, at "
        f"{found['datetime_start'].isoformat()}, and has not completed.",
        "Its entries keep their previous results; look at the openaddr_batch DAG run in the Airflow UI.",
    ]
    page = _site(base_url, f"/sets/{found['id']}/")
    if page:
        paragraphs.append(page)
    return Message(
        "stalled_set",
        str(found["id"]),
        f"[OpenAddresses Machine] Set {found['id']} has not completed after {hours} hours",
        "\n\n".join(paragraphs),
    )


# ----------------------------------------------------------------------------------------------------------------
# Subscribers
# ----------------------------------------------------------------------------------------------------------------


def unsubscribe_headers(unsubscribe_url: str) -> dict[str, str]:
    """RFC 8058's one-click unsubscribe headers (the URL answers a ``POST`` of ``List-Unsubscribe=One-Click``)."""
    return {"List-Unsubscribe": f"<{unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def unsubscribe_url(base_url: str, token: str) -> str:
    """The one-click unsubscribe link of a subscription."""
    return f"{base_url.rstrip('/')}/subscriptions/{token}/unsubscribe"


def confirmation_message(
    subscription: Mapping[str, Any], *, confirm_url: str, unsubscribe: str, source_url: str | None
) -> Message:
    """The double opt-in message: the signed confirmation link."""
    path = subscription["source_path"]
    paragraphs = [
        f"Someone, probably you, asked to be told by e-mail when the OpenAddresses source {path} breaks or "
        "recovers.",
        f"To confirm, open this link (it works for 7 days):\n{confirm_url}",
        "If you did not ask for this, ignore this message: nothing is sent without confirmation.",
    ]
    if source_url:
        paragraphs.insert(1, source_url)
    paragraphs.append(f"Unsubscribe: {unsubscribe}")
    return Message(
        "confirmation",
        str(subscription["id"]),
        f"Confirm your subscription to {path}",
        "\n\n".join(paragraphs),
        to=(subscription["email"],),
        headers=unsubscribe_headers(unsubscribe),
    )


def subscriber_message(subscription: Mapping[str, Any], *, broken: bool, base_url: str) -> Message:
    """The message to a confirmed subscriber that the source broke (``broken``) or recovered."""
    path = subscription["source_path"]
    link = unsubscribe_url(base_url, subscription["token"])
    if broken:
        subject = f"OpenAddresses source {path} is broken"
        first = f"The latest run of {path} failed: its data is no longer being refreshed."
    else:
        subject = f"OpenAddresses source {path} has recovered"
        first = f"{path} succeeds again."
    paragraphs = [first]
    page = source_page_url(base_url, path)
    if page:
        paragraphs.append(f"Its runs and problems: {page}")
    paragraphs.append(f"You get this because you subscribed to {path}. Unsubscribe with one click: {link}")
    return Message(
        "source_broken" if broken else "source_recovered",
        str(subscription["id"]),
        subject,
        "\n\n".join(paragraphs),
        to=(subscription["email"],),
        headers=unsubscribe_headers(link),
    )


def subscriber_changes(
    subscriptions: Iterable[Mapping[str, Any]], states: Mapping[str, bool]
) -> list[tuple[Mapping[str, Any], bool]]:
    """The confirmed subscriptions whose source's state (``states``: path → broken) differs from what they were
    last told, with the new state. A subscription never told anything (``broken`` null) takes the present state
    without a message, unless the source is broken. A path without a merged run is left alone."""
    changes = []
    for subscription in subscriptions:
        state = states.get(subscription["source_path"])
        if state is None:
            continue
        told = subscription.get("broken")
        if told is None and not state:
            continue
        if told is None or bool(told) != state:
            changes.append((subscription, state))
    return changes


def alerting_status(latest: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the health page says about alerting, from the newest recorded alert
    (:func:`openaddr.db.alerts.latest_alert`): ``state`` ``on``, ``off`` or ``unknown``, the channels, when, and
    the sentence."""
    if latest is None:
        return {
            "state": "unknown",
            "channels": [],
            "datetime": None,
            "text": "Alerts: not known yet (no set has completed and no scheduled run has failed since alerting "
            "was installed).",
        }
    channels = [channel for channel in str(latest["channels"]).split(",") if channel]
    when = latest["datetime"].isoformat(timespec="minutes")
    if not channels:
        text = (
            f"Alerts are off: when the Machine last had something to tell ({latest['kind']}, {when}), no alert "
            "connection was configured (openaddr_alerts_smtp with extra 'to', or openaddr_alerts_slack)."
        )
    else:
        text = f"Alerts are on: {channels_phrase(channels)} (last alert {latest['kind']}, {when})."
    return {"state": "on" if channels else "off", "channels": channels, "datetime": when, "text": text}


# ----------------------------------------------------------------------------------------------------------------
# Deciding, sending, recording
# ----------------------------------------------------------------------------------------------------------------


class Sender(Protocol):
    """Where messages go (the Airflow side's notifiers, :class:`openaddr_airflow.alerts.NotifierSender`)."""

    @property
    def channels(self) -> Sequence[str]:
        """The maintainers' channels configured (``email``, ``slack``); empty: alerts are off."""

    @property
    def subscribers_off(self) -> str | None:
        """Why subscribers cannot be mailed (no SMTP connection, or no sender address), or None."""

    def to_maintainers(self, message: Message) -> list[str]:
        """Send to every maintainers' channel; return those it went to (raise when none took it)."""

    def to_subscriber(self, message: Message) -> None:
        """Send to ``message.to`` by e-mail."""


def _send_once(bind: Bind, message: Message, sender: Sender, *, now: dt.datetime) -> str:
    """Send a maintainers' alert unless it was recorded, then record it: ``sent``, ``off`` (no channel: recorded,
    logged, not sent) or ``already``."""
    if db.alert_sent(bind, message.kind, message.key):
        return "already"
    channels = list(sender.channels)
    if channels:
        channels = sender.to_maintainers(message)
        outcome = "sent"
    else:
        log.warning("%s Not sent: %s", ALERTS_OFF, message.subject)
        outcome = "off"
    db.record_alert(bind, message.kind, message.key, channels=channels, subject=message.subject, now=now)
    return outcome


def alert_failed_run(bind: Bind, message: Message, sender: Sender, *, now: dt.datetime) -> str:
    """Send and record a :func:`failed_run_message` (once per DAG run)."""
    return _send_once(bind, message, sender, now=now)


def alert_set_complete(
    bind: Bind, set_id: int, sender: Sender, *, base_url: str | None, now: dt.datetime
) -> dict[str, Any]:
    """When a set completes: its summary to the maintainers (once per set), then the subscribers' changes.

    :return: the counts, ``alerts`` (``sent``, ``off`` or ``already``), the summary text and the subscribers'
        outcome
    """
    outcome = db.set_outcome(bind, set_id)
    message = set_summary_message(outcome, channels=sender.channels, base_url=base_url)
    log.info("%s\n%s", message.subject, message.text)
    sent = _send_once(bind, message, sender, now=now)
    return {
        "set_id": set_id,
        **{key: outcome[key] for key in ("success", "failure", "warning", "skipped", "pending")},
        "new_failures": len(outcome["new_failures"]),
        "alerts": sent,
        "summary": message.text,
        "subscribers": alert_subscribers(bind, sender, base_url=base_url),
    }


def alert_broken_entries(
    bind: Bind, sender: Sender, *, base_url: str | None, now: dt.datetime
) -> dict[str, int]:
    """Tell the maintainers, once each, of the entries without an accepted success for more than
    :data:`BROKEN_AFTER`; return how many were sent, recorded while alerts were off, and already told."""
    counts = {"sent": 0, "off": 0, "already": 0}
    for entry in db.entries_without_success(bind, now=now, longer_than=BROKEN_AFTER):
        counts[
            _send_once(bind, broken_entry_message(entry, now=now, base_url=base_url), sender, now=now)
        ] += 1
    return counts


def alert_stalled_sets(
    bind: Bind, sender: Sender, *, base_url: str | None, now: dt.datetime
) -> dict[str, int]:
    """Tell the maintainers, once each, of the scheduled sets not complete :data:`STALLED_AFTER` after their
    start."""
    counts = {"sent": 0, "off": 0, "already": 0}
    for found in db.stalled_sets(bind, now=now, older_than=STALLED_AFTER):
        counts[_send_once(bind, stalled_set_message(found, now=now, base_url=base_url), sender, now=now)] += 1
    return counts


def alert_subscribers(bind: Bind, sender: Sender, *, base_url: str | None) -> dict[str, Any]:
    """Mail each confirmed subscriber whose source broke or recovered since they were last told, and record what
    they were told. A message that fails is logged and tried again next time (nothing recorded).

    :return: ``sent``, ``failed`` and, when subscribers cannot be mailed, ``off`` with the reason
    """
    subscriptions = db.confirmed_subscriptions(bind)
    if not subscriptions:
        return {"sent": 0, "failed": 0}
    off = sender.subscribers_off or (
        None if base_url else "the results site's URL (openaddr_base_url) is unset"
    )
    states = db.source_broken(bind, {s["source_path"] for s in subscriptions})
    changes = subscriber_changes(subscriptions, states)
    if off:
        if changes:
            log.error("%d subscriber message(s) not sent: %s", len(changes), off)
        return {"sent": 0, "failed": 0, "off": off, "waiting": len(changes)}
    assert base_url is not None
    sent = failed = 0
    for subscription, broken in changes:
        message = subscriber_message(subscription, broken=broken, base_url=base_url)
        try:
            sender.to_subscriber(message)
        except Exception:
            log.exception("Could not mail subscription %s", subscription["id"])
            failed += 1
            continue
        db.set_told(bind, subscription["id"], broken)
        sent += 1
    return {"sent": sent, "failed": failed}
