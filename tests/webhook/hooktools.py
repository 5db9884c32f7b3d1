"""Helpers of the webhook tests: recorded payloads, signatures, deliveries (imported by tests and conftest)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask.testing import FlaskClient

    from tests.github_server import FakeGitHub

PAYLOADS = Path(__file__).parent / "payloads"
SECRET = "It's a Secret to Everybody"
OWNER = REPO = "openaddresses"
BASE_SHA = "b" * 40
HEAD_SHA = "e" * 40
AIRFLOW_USER, AIRFLOW_PASSWORD = "ci_webhook", "op-password"


def load_payload(name: str, github: FakeGitHub) -> dict[str, Any]:
    """A recorded payload with its URLs on the fake GitHub and its placeholder shas made real."""
    text = (PAYLOADS / f"{name}.json").read_text()
    text = text.replace("https://api.github.com", github.base_url)
    text = text.replace("HEADSHA", HEAD_SHA).replace("BASESHA", BASE_SHA)
    for i in range(1, 4):
        text = text.replace(f"C{i}SHA", str(i) * 40)
    data: dict[str, Any] = json.loads(text)
    return data


def signature(body: bytes, secret: str = SECRET, algorithm: str = "sha256") -> str:
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return f"{algorithm}={digest}"


#: Appended to the delivery ids a test names: PostgreSQL's test database lives for the whole session.
_delivery_suffix = ""


def new_ids() -> None:
    """Start a test: later delivery ids get a new suffix."""
    global _delivery_suffix
    _delivery_suffix = "-" + secrets.token_hex(6)


def delivery_id(name: str) -> str:
    """The delivery id ``name`` stands for in this test."""
    return name + _delivery_suffix


def deliver(
    client: FlaskClient, event: str, payload: Any, delivery: str | None = None, secret: str = SECRET
) -> Any:
    """POST a signed delivery (id ``delivery``, made unique to the test; default random); return the response."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id(delivery) if delivery else secrets.token_hex(8),
        "X-Hub-Signature-256": signature(body, secret),
        "Content-Type": "application/json",
    }
    return client.post("/hook", data=body, headers=headers)
