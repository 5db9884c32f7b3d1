"""Alerts through Airflow's notifiers (machine-ci.md §11): the SMTP provider's ``SmtpNotifier`` and the Slack
provider's ``SlackWebhookNotifier``, configured by two connections. What to send, to whom and when is
:mod:`openaddr.alerts`; this module only finds the channels and hands each message to a notifier.

| connection | type | what |
|---|---|---|
| ``openaddr_alerts_smtp`` | ``smtp`` | the mail server (host, port, login, password; extras as the SMTP provider reads them: ``from_email`` **required**, ``disable_ssl``, ``disable_tls``, ``timeout``, ``retry_limit``) and extra ``to``, the maintainers' addresses (comma-separated or a list). Subscribers are mailed through it too |
| ``openaddr_alerts_slack`` | ``slackwebhook`` | a Slack incoming webhook (host ``https://hooks.slack.com/services``, the webhook's token path as password) |

With neither, alerts are **off**: each alert is still decided, logged as a warning and recorded with no channel,
and the set summary and the health page say so. ``openaddr_alerts_smtp`` without ``to`` mails subscribers only
(a warning says so). Example (``AIRFLOW_CONN_OPENADDR_ALERTS_SMTP``)::

    {"conn_type": "smtp", "host": "smtp.example.org", "port": 587, "login": "machine", "password": "…",
     "extra": {"from_email": "machine@example.org", "to": "maintainers@example.org", "disable_ssl": true}}

The notifiers' ``notify`` is called directly, never through ``BaseNotifier.__call__``: that would render the
message as a Jinja template, and texts carry source paths and problems from strangers (``{{ … }}`` in a path must
stay text).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from openaddr.alerts import Message

log = logging.getLogger(__name__)

SMTP_CONN_ID = "openaddr_alerts_smtp"
SLACK_CONN_ID = "openaddr_alerts_slack"


def _addresses(value: Any) -> list[str]:
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value or [])
    return [str(item).strip() for item in items if str(item).strip()]


class NotifierSender:
    """The :class:`openaddr.alerts.Sender` of the Airflow side: the channels the connections configure, each
    message handed to the SMTP or Slack provider's notifier.

    :param context: the Airflow context passed on to the notifiers (a task's, or a callback's)
    """

    def __init__(self, context: Mapping[str, Any] | None = None) -> None:
        from openaddr_airflow import config

        self.context = dict(context or {})
        smtp = config._connection(SMTP_CONN_ID)
        self.slack = config._connection(SLACK_CONN_ID) is not None
        self.smtp_extra: dict[str, Any] = dict(smtp.extra_dejson) if smtp is not None else {}
        self.smtp = smtp is not None
        self.to = _addresses(self.smtp_extra.get("to"))
        if self.smtp and not self.to:
            log.warning(
                "Connection %s has no extra 'to': the maintainers' alerts go %s",
                SMTP_CONN_ID,
                "to Slack only" if self.slack else "nowhere (alerts are off)",
            )

    @property
    def channels(self) -> Sequence[str]:
        """``email`` (when ``openaddr_alerts_smtp`` names maintainers) and ``slack``."""
        return [name for name, on in (("email", self.smtp and bool(self.to)), ("slack", self.slack)) if on]

    @property
    def subscribers_off(self) -> str | None:
        """Why subscribers cannot be mailed, or None."""
        if not self.smtp:
            return f"connection {SMTP_CONN_ID} is not defined"
        if not self.smtp_extra.get("from_email"):
            return f"connection {SMTP_CONN_ID} has no extra 'from_email'"
        return None

    def _email(self, message: Message, to: Sequence[str]) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        if not self.smtp_extra.get("from_email"):
            raise ValueError(f"Connection {SMTP_CONN_ID} has no extra 'from_email': no e-mail can be sent")
        SmtpNotifier(
            to=list(to),
            from_email=str(self.smtp_extra["from_email"]),
            subject=message.subject,
            html_content=message.html,
            custom_headers=dict(message.headers) or None,
            smtp_conn_id=SMTP_CONN_ID,
        ).notify(self.context)  # type: ignore[arg-type]

    def _slack(self, message: Message) -> None:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        from openaddr.alerts import slack_text

        text = f"*{slack_text(message.subject)}*\n{slack_text(message.text)}"
        notifier = SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=text, unfurl_links=False)
        notifier.notify(self.context)  # type: ignore[no-untyped-call]

    def to_maintainers(self, message: Message) -> list[str]:
        """Send to every configured channel; a channel that fails is logged, and when none took the message the
        last error is raised (the task is retried; nothing was recorded)."""
        sent: list[str] = []
        error: Exception | None = None
        for channel in self.channels:
            try:
                if channel == "email":
                    self._email(message, self.to)
                else:
                    self._slack(message)
            except Exception as exc:
                log.exception("Alert %s %s was not sent by %s", message.kind, message.key, channel)
                error = exc
                continue
            sent.append(channel)
        if not sent and error is not None:
            raise error
        log.info("Alert %s %s sent by %s", message.kind, message.key, ", ".join(sent) or "nothing")
        return sent

    def to_subscriber(self, message: Message) -> None:
        """Mail a subscriber (``message.to``) through ``openaddr_alerts_smtp``."""
        off = self.subscribers_off
        if off:
            raise ValueError(f"Subscribers cannot be mailed: {off}")
        self._email(message, message.to)


class FailedRunNotifier(BaseNotifier):
    """A DAG's ``on_failure_callback``: a failed scheduled run (:func:`openaddr.alerts.failed_run_message`) to the
    maintainers' channels, recorded once per DAG run. Never raises: a callback's error would hide the failure."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        """Decide, send and record the alert of the failed DAG run in ``context``."""
        try:
            _notify_failed_run(context)
        except Exception:
            log.exception("Could not alert on the failed DAG run")


def _notify_failed_run(context: Mapping[str, Any]) -> None:
    from openaddr.alerts import alert_failed_run, failed_run_message
    from openaddr.db.runs import utcnow
    from openaddr_airflow import config

    # The dag-processor passes the DAG run when it knows the run's last task instance; otherwise only the DAG,
    # ``run_id`` and ``reason`` (airflow/dag_processing/processor.py, _execute_dag_callbacks): the run type is
    # then the run id's prefix (``scheduled__…``, ``asset_triggered__…``, ``manual__…``).
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    run_id = str(getattr(dag_run, "run_id", None) or context.get("run_id") or "")
    dag_id = str(getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None) or "?")
    run_type = getattr(dag_run, "run_type", None)
    run_type_text = str(getattr(run_type, "value", run_type) or run_id.partition("__")[0])
    message = failed_run_message(
        dag_id=dag_id,
        run_id=run_id,
        run_type=run_type_text,
        logical_date=getattr(dag_run, "logical_date", None),
        reason=context.get("reason"),
        ui_url=config.airflow_ui_url(),
    )
    if message is None:
        log.info("DAG run %s of %s failed; not scheduled, so no alert", run_id, dag_id)
        return
    with config.machine_engine() as engine:
        outcome = alert_failed_run(engine, message, NotifierSender(context), now=utcnow())
    log.info("Failed DAG run %s: alert %s", message.key, outcome)
