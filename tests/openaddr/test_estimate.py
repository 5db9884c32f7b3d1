"""Estimates before downloading (openaddr.machine.estimate, issue 15): real requests to loopback servers."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from esri_server import esri_server_fixture  # noqa: F401  (the esri_server fixture)

from openaddr.machine import estimate_entries
from openaddr.machine.estimate import BASE_SECONDS, BYTES_PER_SECOND, FEATURES_PER_SECOND

if TYPE_CHECKING:
    from pathlib import Path

    from esri_server import ReplayServer

    from tests.servers import LoopbackHTTPServer


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:12]


def planned(label: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "label": label,
        "path": f"sources/{label}.json",
        "size": "standard",
        "timeout": 10800.0,
        "data": data,
        **extra,
    }


def test_content_length_of_a_head_request(
    http_server: LoopbackHTTPServer, allow_private_urls: None, uid: str
) -> None:
    body = b"x" * 123_456
    url = http_server.add(f"/estimate/{uid}/a.csv", body)
    moved = http_server.add_redirect(f"/estimate/{uid}/moved.csv", url)

    found = estimate_entries(
        [
            planned("a", {"protocol": "http", "data": url}),
            planned("moved", {"protocol": "http", "data": moved}),
        ]
    )

    assert found["a"].seconds == pytest.approx(BASE_SECONDS + len(body) / BYTES_PER_SECOND)
    assert found["a"].basis == "Content-Length 123,456 bytes"
    assert found["moved"] == found["a"]
    assert http_server.requests[-1].path == f"/estimate/{uid}/a.csv"


def test_the_arcgis_count(esri_server: ReplayServer, fixtures: Path) -> None:
    count = json.loads((fixtures / "data" / "us-ks-brown-count-only.json").read_text())["count"]
    url = esri_server.layer_url("us-ks-brown")

    [(label, found)] = estimate_entries([planned("brown", {"protocol": "ESRI", "data": url})]).items()

    assert found.seconds == pytest.approx(BASE_SECONDS + count / FEATURES_PER_SECOND)
    assert found.basis == f"ArcGIS count {count:,} features"
    assert [request.kind for request in esri_server.queries()] == ["count"]


def test_what_cannot_be_estimated_is_unknown_with_its_reason(
    http_server: LoopbackHTTPServer, allow_private_urls: None, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = http_server.url(f"/estimate/{uid}/missing.csv")
    hanging = http_server.add_hanging(f"/estimate/{uid}/hang.csv")
    csv = {"format": "csv"}
    entries = [
        planned("missing", {"protocol": "http", "data": missing}),
        planned("hanging", {"protocol": "http", "data": hanging}),
        planned("ftp", {"protocol": "ftp", "data": "ftp://127.0.0.1/a.zip"}),
        planned("large", {"protocol": "http", "data": missing, "conform": {**csv, "size": "large"}}),
        planned("patient", {"protocol": "http", "data": missing}, timeout=20 * 3600.0),
        planned("nothing", {}),
    ]

    with caplog.at_level("INFO", logger="openaddr.machine.estimate"):
        found = estimate_entries(entries, timeout=0.5)

    assert {label: estimate.seconds for label, estimate in found.items()} == dict.fromkeys(found)
    assert found["missing"].basis == "HEAD answered 404 without a Content-Length"
    assert found["hanging"].basis.startswith("estimate failed: ")
    assert found["ftp"].basis == "nothing to ask before downloading (ftp protocol)"
    assert found["large"].basis == "conform.size is large"
    assert found["patient"].basis == "its timeout is 20 hours"
    assert found["nothing"].basis == "nothing to ask before downloading (no protocol)"
    # Logged, each with its reason: a documented mode, not a silent fallback.
    assert (
        "missing: unknown cost (HEAD answered 404 without a Content-Length): a task of its own" in caplog.text
    )
    assert "Estimated 6 entries before downloading: 6 unknown" in caplog.text


def test_a_private_address_is_not_asked(
    http_server: LoopbackHTTPServer, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENADDR_ALLOW_PRIVATE_URLS", "OPENADDR_ALLOWED_PRIVATE_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    url = http_server.add(f"/estimate/{uid}/private.csv", b"secret")

    found = estimate_entries([planned("private", {"protocol": "http", "data": url})])

    assert found["private"].seconds is None
    assert "private" in found["private"].basis or "loopback" in found["private"].basis
    assert http_server.hits[f"/estimate/{uid}/private.csv"] == 0


def test_the_budget_bounds_the_whole_estimate(
    http_server: LoopbackHTTPServer, allow_private_urls: None, uid: str
) -> None:
    hanging = http_server.add_hanging(f"/estimate/{uid}/slow.csv")

    found = estimate_entries(
        [planned("slow", {"protocol": "http", "data": hanging})], timeout=5.0, budget=0.5
    )

    assert found["slow"].seconds is None
    assert found["slow"].basis in ("no answer within the 0.5 s estimate budget",) or found[
        "slow"
    ].basis.startswith("estimate failed: ")
