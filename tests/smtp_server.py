"""A local SMTP server for the alert and subscription tests: aiosmtpd on loopback, keeping every message.

Load with ``pytest_plugins = ["tests.smtp_server"]``; the ``smtp_server`` fixture (session) is a
:class:`LocalSMTPServer`, emptied before each test that uses it (``smtp``).
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from aiosmtpd.controller import Controller

if TYPE_CHECKING:
    from collections.abc import Iterator
    from email.message import EmailMessage

FROM = "machine@results.example"


@dataclass(frozen=True)
class Received:
    """One message the server took: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def html(self) -> str:
        """The HTML part's text."""
        part = self.message.get_body(("html",))
        assert part is not None, self.message
        return str(part.get_content())


class _Handler:
    def __init__(self, owner: LocalSMTPServer) -> None:
        self.owner = owner

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.owner.lock:
            self.owner.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 Message accepted"


class LocalSMTPServer:
    """aiosmtpd's controller on ``127.0.0.1`` at a free port; ``received`` lists what it took."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self) -> str:
        """The server as an SMTP URI (plain, no TLS), the form of ``OA_WEBHOOK_SMTP_URL``."""
        return f"smtp://127.0.0.1:{self.port}?from_email={FROM}&disable_ssl=true&disable_tls=true"

    def connection(self, **extra: Any) -> dict[str, Any]:
        """The server as an Airflow ``smtp`` connection (JSON form), with ``extra``."""
        return {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "extra": {
                "from_email": FROM,
                "disable_ssl": True,
                "disable_tls": True,
                "retry_limit": 0,
                **extra,
            },
        }

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[LocalSMTPServer]:
    server = LocalSMTPServer()
    yield server
    server.close()


@pytest.fixture
def smtp(smtp_server: LocalSMTPServer) -> LocalSMTPServer:
    """The session's server, with nothing received yet."""
    with smtp_server.lock:
        smtp_server.received.clear()
    return smtp_server
