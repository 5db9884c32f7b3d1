"""E-mail from the results site (the subscription's confirmation), where no Airflow notifier runs.

The server is named by the same URI as the Airflow connection ``openaddr_alerts_smtp`` (``AIRFLOW_CONN_…``), so
one value configures both sides::

    smtp://USER:PASSWORD@HOST:PORT?from_email=alerts%40example.org&disable_ssl=true

with the SMTP provider's meanings: SSL from the first byte unless ``disable_ssl``, STARTTLS unless
``disable_tls`` (when not SSL), ``timeout`` in seconds (default 30), ``from_email`` required here.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from openaddr.alerts import Message

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")


class MailConfigurationError(ValueError):
    """The SMTP URI cannot be used; the text says why."""


@dataclasses.dataclass(frozen=True)
class SmtpServer:
    """Where and how to send: host, port, login, sender, SSL or STARTTLS, timeout."""

    host: str
    port: int
    from_email: str
    user: str | None = None
    password: str | None = None
    use_ssl: bool = True
    starttls: bool = True
    timeout: float = 30.0


def parse_smtp_url(url: str) -> SmtpServer:
    """An :class:`SmtpServer` from an Airflow SMTP connection URI.

    :raises MailConfigurationError: not ``smtp://``, no host, no ``from_email``, or a bad port or timeout
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "smtp":
        raise MailConfigurationError(f"The SMTP URI must start with smtp:// (got {parts.scheme or 'none'!r})")
    if not parts.hostname:
        raise MailConfigurationError("The SMTP URI names no host")
    extras = dict(parse_qsl(parts.query))
    from_email = extras.get("from_email", "").strip()
    if not from_email:
        raise MailConfigurationError("The SMTP URI has no from_email (e.g. ?from_email=alerts%40example.org)")
    use_ssl = extras.get("disable_ssl", "").lower() not in _TRUE
    try:
        port = parts.port or (465 if use_ssl else 587)
        timeout = float(extras.get("timeout", "30"))
    except ValueError as exc:
        raise MailConfigurationError(f"The SMTP URI has a bad port or timeout: {exc}") from None
    return SmtpServer(
        host=parts.hostname,
        port=port,
        from_email=from_email,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_ssl=use_ssl,
        starttls=extras.get("disable_tls", "").lower() not in _TRUE,
        timeout=timeout,
    )


def build_email(message: Message, from_email: str) -> EmailMessage:
    """The message as a MIME e-mail: plain text with an HTML alternative, its extra headers."""
    mail = EmailMessage()
    mail["From"] = from_email
    mail["To"] = ", ".join(message.to)
    mail["Subject"] = message.subject
    mail["Date"] = email.utils.formatdate(localtime=False)
    mail["Message-ID"] = email.utils.make_msgid(domain=from_email.rpartition("@")[2] or None)
    for key, value in message.headers.items():
        mail[key] = value
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    return mail


def send(server: SmtpServer, message: Message) -> None:
    """Send one message to its ``to`` addresses.

    :raises smtplib.SMTPException, OSError: the server refused or could not be reached
    """
    if not message.to:
        raise ValueError(f"Message {message.kind} {message.key} has no recipient")
    mail = build_email(message, server.from_email)
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.use_ssl:
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=server.timeout)
    with client:
        if not server.use_ssl and server.starttls:
            client.starttls(context=context)
        if server.user and server.password:
            client.login(server.user, server.password)
        client.send_message(mail)
    log.info("Sent %s %s to %d address(es)", message.kind, message.key, len(message.to))
