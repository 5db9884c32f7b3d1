"""HTTP downloads, the private-address guard, settings and the stored cache (processing.md §3.1–§3.5, §13).

Every network test talks to the loopback servers of ``tests/servers.py``; timeouts and retry delays come from
``download_settings`` (a second or less), so the whole module runs in a few seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import logging
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.download import (
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    DownloadTooLargeError,
    EmptyDownloadError,
    HTTPStatusError,
    IncompleteDownloadError,
    PrivateAddressError,
    ResponseTimeoutError,
    StageClock,
    UnsupportedURLError,
    download,
    guard,
    retry_policy,
)
from openaddr.download.cache import cache_stem, legacy_cache_url, store_cache
from openaddr.download.guard import check_host, forbidden_reason
from openaddr.download.http import USER_AGENT, request_headers
from openaddr.retry import retry_after_seconds
from openaddr.settings import Settings
from openaddr.sources import LayerEntry, Source
from tests.servers import fast_settings

if TYPE_CHECKING:
    from tests.servers import LoopbackHTTPServer

PORTLAND = "us-or-portland.zip"


def make_entry(url: Any, protocol: str = "http", **extra: Any) -> LayerEntry:
    """A one-entry source whose ``addresses`` entry ``primary`` downloads ``url``."""
    data = {"name": "primary", "protocol": protocol, "data": url, **extra}
    document = {"schema": 2, "coverage": {"country": "us"}, "layers": {"addresses": [data]}}
    source = Source(path=Path("us-test.json"), document=document, version=2, original=document)
    return LayerEntry(source, "addresses", 0, "primary", data)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- success --------------------------------------------------------------------------------------------------


def test_downloads_a_fixture_archive(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    url = http_server.url(f"/data/{PORTLAND}")
    seen: list[int] = []
    result = download(make_entry(url), tmp_path, settings=download_settings, progress=seen.append)
    original = fixtures / "data" / PORTLAND
    assert result.path == tmp_path / f"{cache_stem('addresses', 'primary', url)}.zip"
    assert result.path.read_bytes() == original.read_bytes()
    assert result.fingerprint == md5_of(original)
    assert result.size == original.stat().st_size
    assert result.content_type == "application/zip"
    assert result.url == url
    assert result.final_url is None
    assert seen[-1] == result.size
    assert seen == sorted(seen)
    assert listing(tmp_path) == [result.path.name]  # no partial file left beside it


def test_sends_user_agent_and_request_headers(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    # The header corpus/sources/us/il/kane.json sends.
    entry = make_entry(
        http_server.url(f"/data/{PORTLAND}"),
        request={"headers": {"Referer": "https://gistech.countyofkane.org/"}},
    )
    download(entry, tmp_path, settings=download_settings)
    headers = http_server.last_request(f"/data/{PORTLAND}").headers
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Referer"] == "https://gistech.countyofkane.org/"
    assert headers["Host"] == f"127.0.0.1:{http_server.port}"


def test_request_headers() -> None:
    data = {
        "request": {
            "headers": {"user-agent": "Mozilla/5.0", "Host": "evil.example", "X-Bad": "a\r\nb", "X-Num": 3}
        }
    }
    assert request_headers(data) == {"user-agent": "Mozilla/5.0"}
    assert request_headers({}) == {"User-Agent": USER_AGENT}
    assert request_headers({"request": {"headers": {"Accept": "text/csv"}}}) == {
        "User-Agent": USER_AGENT,
        "Accept": "text/csv",
    }


def test_follows_redirects(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    target = http_server.url(f"/data/{PORTLAND}")
    http_server.add_redirect("/redirect/second", target, status=301)
    first = http_server.add_redirect("/redirect/first", "second", status=307)  # relative
    result = download(make_entry(first), tmp_path, settings=download_settings)
    assert result.fingerprint == md5_of(fixtures / "data" / PORTLAND)
    assert result.final_url == target
    assert result.path.suffix == ".zip"
    assert http_server.hits["/redirect/first"] == http_server.hits["/redirect/second"] == 1


def test_too_many_redirects(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = http_server.add_redirect("/redirect/loop", "/redirect/loop")
    settings = download_settings.replace(max_redirects=3)
    with pytest.raises(DownloadError, match=r"Too many redirects \(more than 3\)"):
        download(make_entry(url), tmp_path, settings=settings)
    assert http_server.hits["/redirect/loop"] == 4
    assert listing(tmp_path) == []


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/a.zip", "gopher://127.0.0.1/"])
def test_redirect_to_another_scheme_is_refused(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path, location: str
) -> None:
    url = http_server.add_redirect("/redirect/scheme", location)
    with pytest.raises(UnsupportedURLError, match="Refusing to follow a redirect"):
        download(make_entry(url), tmp_path, settings=download_settings)


@pytest.mark.parametrize(
    "location", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/a.zip", "http://[::1]/a.zip"]
)
def test_redirect_to_a_private_address_is_refused(
    http_server: LoopbackHTTPServer, tmp_path: Path, location: str
) -> None:
    # Only loopback IPv4 is exempt, so the first hop passes and the redirect target is checked on its own.
    settings = fast_settings(Settings(allowed_private_networks=("127.0.0.0/8",)))
    url = http_server.add_redirect("/redirect/private", location)
    with pytest.raises(PrivateAddressError, match="Refusing to fetch from a private address"):
        download(make_entry(url), tmp_path, settings=settings)
    assert http_server.hits["/redirect/private"] == 1
    assert listing(tmp_path) == []


# --- statuses and retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "attempts"), [(404, 1), (403, 1), (410, 1), (499, 1), (500, 3), (503, 3)])
def test_final_status_is_a_failure(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path, status: int, attempts: int
) -> None:
    path = f"/status/{status}"
    url = http_server.add(path, b"<html>error page, not data</html>", status=status, content_type="text/html")
    with pytest.raises(HTTPStatusError) as info:
        download(make_entry(url), tmp_path, settings=download_settings)
    assert str(info.value) == f"{status} response from {url}"
    assert info.value.status == status
    assert http_server.hits[path] == attempts  # 5xx retried twice, 4xx final at once
    assert listing(tmp_path) == []  # the error body is never kept as data


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_retry_recovers(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path, status: int
) -> None:
    path = f"/flaky/{status}"
    body = (fixtures / "data" / PORTLAND).read_bytes()
    url = http_server.add_flaky(path, body, failures=1, status=status)
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.fingerprint == hashlib.md5(body).hexdigest()
    assert http_server.hits[path] == 2


def test_retry_after_is_honoured_up_to_the_cap(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("openaddr.retry.time.sleep", slept.append)
    url = http_server.add_flaky(
        "/flaky/retry-after", b"a,b\n1,2\n", failures=2, status=429, retry_after="120"
    )
    settings = download_settings.replace(retry_delays=(0.01, 0.02), max_retry_after=7.0)
    download(make_entry(url), tmp_path, settings=settings)
    assert slept == [7.0, 7.0]


def test_scheduled_retry_delays(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("openaddr.retry.time.sleep", slept.append)
    url = http_server.add_flaky("/flaky/delays", b"a,b\n1,2\n", failures=5, status=502)
    with pytest.raises(HTTPStatusError):
        download(make_entry(url), tmp_path, settings=download_settings.replace(retry_delays=(10.0, 60.0)))
    assert slept == [10.0, 60.0]  # the production schedule, without waiting for it
    assert http_server.hits["/flaky/delays"] == 3


def test_retry_after_as_an_http_date_is_honoured(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("openaddr.retry.time.sleep", slept.append)
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 40))
    url = http_server.add_flaky("/flaky/retry-date", b"a,b\n1,2\n", failures=1, status=503, retry_after=when)
    settings = download_settings.replace(retry_delays=(0.01,), max_retry_after=300.0)
    result = download(make_entry(url), tmp_path, settings=settings)
    assert result.size == 8
    (waited,) = slept
    assert 30 <= waited <= 41  # until the date, not the 10 ms of the schedule


def test_retry_after_past_the_deadline_ends_the_download_at_once(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("openaddr.retry.time.sleep", pytest.fail)  # never sleeps past the deadline
    url = http_server.add_flaky("/flaky/retry-late", b"a,b\n1,2\n", failures=1, status=429, retry_after="120")
    settings = download_settings.replace(retry_delays=(0.01,), max_retry_after=300.0)
    with pytest.raises(DownloadTimeoutError, match=r"^Timed out after 0:00:\d\d \(429 response from "):
        download(make_entry(url), tmp_path, settings=settings, deadline=time.time() + 30)
    assert http_server.hits["/flaky/retry-late"] == 1
    assert listing(tmp_path) == []


def test_retries_used_up_end_with_the_last_failure_named(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = http_server.add_flaky("/flaky/always", b"a,b\n1,2\n", failures=9, status=502)
    with caplog.at_level(logging.WARNING), pytest.raises(HTTPStatusError) as info:
        download(make_entry(url), tmp_path, settings=download_settings)
    assert str(info.value) == f"502 response from {url}"
    assert info.value.status == 502
    assert http_server.hits["/flaky/always"] == 3
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries == [
        f"502 response from {url}; retrying in 0.01 s (attempt 2 of 3)",
        f"502 response from {url}; retrying in 0.01 s (attempt 3 of 3)",
    ]


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), (None, None), ("soon", None)])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


def test_retry_after_http_date() -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 90))
    assert 85 <= (retry_after_seconds(when) or 0) <= 91


def test_a_wait_past_the_deadline_ends_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise DownloadConnectionError("Connection to http://example.com failed")

    monkeypatch.setattr("openaddr.retry.time.sleep", pytest.fail)
    clock = StageClock(deadline=time.time() + 5)
    with pytest.raises(DownloadTimeoutError, match=r"^Timed out after 0:00:00 \(Connection to"):
        retry_policy(Settings(retry_delays=(10.0,))).call(attempt, deadline=clock)
    assert calls == [1]


# --- hanging, slow, truncated, empty, too large ---------------------------------------------------------------


def test_hanging_server_fails_within_the_read_timeout(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = http_server.add_hanging("/hang/always")
    settings = download_settings.replace(read_timeout=0.2)
    with pytest.raises(ResponseTimeoutError, match=r"^Timed out after 0.2 s waiting for a response from "):
        download(make_entry(url), tmp_path, settings=settings)
    assert http_server.hits["/hang/always"] == 3  # a timeout is retried like a connection error
    assert listing(tmp_path) == []


def test_deadline_stops_a_slow_download(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    # 1,000 bytes one at a time every 20 ms: 20 s in all, each byte well within the read timeout.
    url = http_server.add_slow("/slow/deadline", b"x" * 1000, delay=0.02)
    with pytest.raises(DownloadTimeoutError, match=r"^Timed out after 0:00:0\d"):
        download(make_entry(url), tmp_path, settings=download_settings, deadline=time.time() + 0.4)
    assert listing(tmp_path) == []


def test_deadline_shortens_the_read_timeout(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    # Headers at once, then 5 s of silence; the read timeout alone (10 s) would wait for it.
    url = http_server.add_slow("/slow/stall", b"x" * 10, delay=5.0)
    settings = download_settings.replace(read_timeout=10.0)
    start = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match="^Timed out after"):
        download(make_entry(url), tmp_path, settings=settings, deadline=time.time() + 0.3)
    assert time.monotonic() - start < 4
    assert listing(tmp_path) == []


def test_deadline_stops_a_hanging_server(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = http_server.add_hanging("/hang/deadline")
    settings = download_settings.replace(read_timeout=10.0)
    with pytest.raises(DownloadTimeoutError, match="^Timed out after"):
        download(make_entry(url), tmp_path, settings=settings, deadline=time.time() + 0.3)
    assert http_server.hits["/hang/deadline"] == 1


def test_download_time_limit_stops_a_slow_download(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = http_server.add_slow("/slow/limit", b"x" * 1000, delay=0.02)
    settings = download_settings.replace(download_time_limit=0.4)
    with pytest.raises(DownloadTimeoutError, match="^Timed out after"):
        download(make_entry(url), tmp_path, settings=settings)
    assert listing(tmp_path) == []


def test_slow_download_within_limits_succeeds(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    body = b"NUMBER,STREET\n1,Main St\n"
    url = http_server.add_slow("/slow/fine", body, delay=0.005, chunk=4)
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.path.read_bytes() == body
    assert result.path.suffix == ".csv"  # no extension in the URL: Content-Type text/csv


def test_truncated_download_is_a_failure(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    body = (fixtures / "data" / PORTLAND).read_bytes()
    url = http_server.add_truncated("/truncated/portland.zip", body[:300], claimed=len(body))
    with pytest.raises(IncompleteDownloadError, match="^Incomplete download from "):
        download(make_entry(url), tmp_path, settings=download_settings)
    assert http_server.hits["/truncated/portland.zip"] == 3
    assert listing(tmp_path) == []


def test_empty_download_is_a_failure(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = http_server.add("/empty.csv", b"", content_type="text/csv")
    with pytest.raises(EmptyDownloadError, match="^Empty download from "):
        download(make_entry(url), tmp_path, settings=download_settings)
    assert http_server.hits["/empty.csv"] == 1
    assert listing(tmp_path) == []


@pytest.mark.parametrize("gzip_encode", [False, True])
def test_download_too_large(
    http_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path, gzip_encode: bool
) -> None:
    # 10,000 bytes of text (20 bytes gzip-encoded): the cap counts what is written, after decoding.
    url = http_server.add(
        f"/large/{gzip_encode}.csv", b"1,2\n" * 2500, content_type="text/csv", gzip_encode=gzip_encode
    )
    with pytest.raises(DownloadTooLargeError, match="^Download too large"):
        download(make_entry(url), tmp_path, settings=download_settings.replace(max_download_bytes=5000))
    assert listing(tmp_path) == []


def test_gzip_content_encoding_is_decoded(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    text = (fixtures / "data" / "us-pa-bucks.geojson").read_bytes()
    url = http_server.add(
        "/encoded/bucks.geojson", text, content_type="application/geo+json", gzip_encode=True
    )
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.path.read_bytes() == text
    assert result.fingerprint == hashlib.md5(text).hexdigest()  # the fingerprint covers decoded bytes
    assert result.path.suffix == ".geojson"


# --- the cache file's type (§3.4) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "headers", "ext"),
    [
        # corpus/sources/us/countrywide.json: no extension, the Content-Type decides.
        ("/download/yw36-suxr/application%2Fx-zip-compressed", "application/x-zip-compressed", {}, ".zip"),
        ("/export/addresses", "application/zip", {}, ".zip"),
        ("/export.aspx", "text/csv; charset=utf-8", {}, ".csv"),
        # A Content-Disposition naming another extension than the Content-Type's: the first bytes decide.
        ("/export/attached", "text/html", {"Content-Disposition": 'attachment; filename="a.zip"'}, ".zip"),
        (
            "/export/octets",
            "application/octet-stream",
            {"Content-Disposition": "attachment; filename=a.zip"},
            ".zip",
        ),
        # A trusted URL extension wins over a wrong Content-Type.
        ("/mistyped/portland.zip", "text/html", {}, ".zip"),
    ],
)
def test_type_of_the_cache_file(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    fixtures: Path,
    tmp_path: Path,
    path: str,
    content_type: str,
    headers: dict[str, str],
    ext: str,
) -> None:
    body = (fixtures / "data" / PORTLAND).read_bytes()
    url = http_server.add(path, body, content_type=content_type, headers=headers)
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.path.name == cache_stem("addresses", "primary", url) + ext
    assert result.fingerprint == hashlib.md5(body).hexdigest()


def test_no_content_type_sniffs_the_first_bytes(
    http_server: LoopbackHTTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    text = (fixtures / "data" / "us-pa-bucks.geojson").read_bytes()
    assert text.lstrip()[:1] == b"{"
    url = http_server.add("/api/features", text)
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.path.suffix == ".json"
    assert result.content_type is None


def test_existing_cache_file_is_reused(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = http_server.add("/reuse/data.csv", b"a,b\n", content_type="text/csv")
    existing = tmp_path / (cache_stem("addresses", "primary", url) + ".csv")
    existing.write_bytes(b"x,y\n1,2\n")
    with caplog.at_level(logging.INFO, logger="openaddr.download"):
        result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.path == existing
    assert result.fingerprint == hashlib.md5(b"x,y\n1,2\n").hexdigest()
    assert http_server.hits["/reuse/data.csv"] == 0
    assert any("Reusing" in r.getMessage() for r in caplog.records)


# --- TLS (§3.2) -----------------------------------------------------------------------------------------------


def test_certificate_error_falls_back_to_no_verification(
    https_server: LoopbackHTTPServer,
    download_settings: Settings,
    fixtures: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = https_server.url(f"/data/{PORTLAND}")
    with caplog.at_level(logging.WARNING, logger="openaddr.download"):
        result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.fingerprint == md5_of(fixtures / "data" / PORTLAND)
    assert f"Retrying {url} without SSL verification" in caplog.text


def test_certificate_error_without_fallback_is_a_failure(
    https_server: LoopbackHTTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = https_server.url(f"/data/{PORTLAND}")
    with pytest.raises(DownloadError, match="SSL certificate verification failed"):
        download(make_entry(url), tmp_path, settings=download_settings.replace(tls_fallback=False))
    assert listing(tmp_path) == []


# --- the private-address guard (§3.1) -------------------------------------------------------------------------


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Production settings (guard on), whatever the environment says, with short timeouts."""
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_URLS", raising=False)
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_HOSTS", raising=False)
    return fast_settings(Settings.from_env())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/data/us-or-portland.zip",
        "http://localhost:{port}/data/us-or-portland.zip",
        "http://[::1]:{port}/data/us-or-portland.zip",
        "http://10.1.2.3/a.zip",
        "http://192.168.0.10/a.zip",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://0.0.0.0:{port}/a.zip",
        "http://[::ffff:127.0.0.1]:{port}/a.zip",
        "ftp://127.0.0.1:{port}/nl.zip",
    ],
)
def test_private_addresses_are_refused(
    http_server: LoopbackHTTPServer, guarded: Settings, tmp_path: Path, url: str
) -> None:
    before = sum(http_server.hits.values())
    start = time.monotonic()
    with pytest.raises(PrivateAddressError, match="^Refusing to fetch from a private address"):
        download(make_entry(url.format(port=http_server.port)), tmp_path, settings=guarded)
    assert time.monotonic() - start < 1  # refused before any connection, not after a timeout
    assert sum(http_server.hits.values()) == before
    assert listing(tmp_path) == []


def test_guard_is_the_default(
    http_server: LoopbackHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_URLS", raising=False)
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_HOSTS", raising=False)
    with pytest.raises(PrivateAddressError):
        download(make_entry(http_server.url(f"/data/{PORTLAND}")), tmp_path)


@pytest.mark.parametrize("variable", ["OPENADDR_ALLOW_PRIVATE_URLS", "OPENADDR_ALLOW_PRIVATE_HOSTS"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_environment_lifts_the_guard(
    http_server: LoopbackHTTPServer,
    guarded: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    host: str,
) -> None:
    monkeypatch.setenv(variable, "1")
    settings = fast_settings(Settings.from_env())
    assert settings.allow_private_hosts
    result = download(
        make_entry(http_server.url(f"/data/{PORTLAND}", host=host)), tmp_path, settings=settings
    )
    assert result.size > 0


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("8.8.8.8", None),
        ("151.101.1.69", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_forbidden_reason(address: str, reason: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


def test_check_host() -> None:
    with pytest.raises(PrivateAddressError, match="localhost resolves to"):
        check_host("localhost", 80, settings=Settings())
    assert "127.0.0.1" in check_host("localhost", 80, settings=Settings(allow_private_hosts=True))
    allowed = Settings(allowed_private_networks=("127.0.0.0/8", "::1/128"))
    assert "127.0.0.1" in check_host("localhost", 80, settings=allowed)
    with pytest.raises(PrivateAddressError, match="cloud metadata"):
        check_host("169.254.169.254", 80, settings=Settings(allowed_private_networks=("169.254.0.0/16",)))
    with pytest.raises(DownloadConnectionError, match="Cannot resolve host"):
        check_host("no-such-host.invalid", 80, settings=Settings())


def test_connection_goes_to_the_checked_address(
    http_server: LoopbackHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the client connects to what the guard checked and never resolves the name again."""
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.2", "127.0.0.1"] if host == "rebind.invalid" else []

    monkeypatch.setattr(guard, "resolve", resolve)
    settings = fast_settings(Settings(allowed_private_networks=("127.0.0.0/8",)))
    url = http_server.url(f"/data/{PORTLAND}", host="rebind.invalid")  # .invalid never resolves (RFC 6761)
    result = download(make_entry(url), tmp_path, settings=settings)
    assert result.size > 0
    assert resolved == ["rebind.invalid"]
    # 127.0.0.2 refused the connection (the server listens on 127.0.0.1 only), so the next address was used.
    assert (
        http_server.last_request(f"/data/{PORTLAND}").headers["Host"] == f"rebind.invalid:{http_server.port}"
    )


def test_connection_refused_everywhere(download_settings: Settings, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadConnectionError, match="Could not connect to"):
        download(make_entry(f"http://127.0.0.1:{port}/a.zip"), tmp_path, settings=download_settings)
    assert listing(tmp_path) == []


# --- entries, file URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, "", "   ", [], 42])
def test_entry_without_a_url(download_settings: Settings, tmp_path: Path, data: Any) -> None:
    with pytest.raises(UnsupportedURLError, match="no data URL"):
        download(make_entry(data), tmp_path, settings=download_settings)


def test_legacy_list_of_urls_uses_the_first(
    http_server: LoopbackHTTPServer,
    download_settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls = [http_server.url(f"/data/{PORTLAND}"), http_server.url("/data/nl.zip")]
    with caplog.at_level(logging.WARNING, logger="openaddr.download"):
        result = download(make_entry(urls), tmp_path, settings=download_settings)
    assert result.url == urls[0]
    assert "using only its first URL" in caplog.text


def test_file_urls_are_refused_by_default(
    download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    url = (fixtures / "data" / PORTLAND).as_uri()
    with pytest.raises(UnsupportedURLError, match="file URLs are for tests only"):
        download(make_entry(url), tmp_path / "work", settings=download_settings)


def test_file_urls_when_allowed(download_settings: Settings, fixtures: Path, tmp_path: Path) -> None:
    original = fixtures / "data" / PORTLAND
    settings = download_settings.replace(allow_file_urls=True)
    result = download(make_entry(original.as_uri()), tmp_path, settings=settings)
    assert result.fingerprint == md5_of(original)
    assert result.path.suffix == ".zip"


# --- the stored cache and the fingerprint (§3.5) --------------------------------------------------------------


def test_store_cache_copies_an_archive(fixtures: Path, tmp_path: Path) -> None:
    original = fixtures / "data" / PORTLAND
    name, fingerprint = store_cache(original, tmp_path / "state")
    assert name == "cache.zip"
    assert (tmp_path / "state" / name).read_bytes() == original.read_bytes()
    assert fingerprint == md5_of(original)
    assert listing(tmp_path / "state") == ["cache.zip"]


def test_store_cache_zips_other_files(fixtures: Path, tmp_path: Path) -> None:
    download_path = tmp_path / "addresses-primary-0123abcd.geojson"
    download_path.write_bytes((fixtures / "data" / "us-pa-bucks.geojson").read_bytes())
    name, fingerprint = store_cache(download_path, tmp_path / "state")
    assert name == "cache.zip"
    assert fingerprint == md5_of(download_path)  # the raw download's digest, not the zip's
    with zipfile.ZipFile(tmp_path / "state" / name) as archive:
        assert archive.namelist() == [download_path.name]
        assert archive.read(download_path.name) == download_path.read_bytes()


def test_store_cache_keeps_gzip(tmp_path: Path) -> None:
    download_path = tmp_path / "addresses-primary-0123abcd.gz"
    download_path.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    name, fingerprint = store_cache(download_path, tmp_path / "state", fingerprint="f" * 32)
    assert name == "cache.gz"
    assert fingerprint == "f" * 32
    assert (tmp_path / "state" / name).read_bytes() == download_path.read_bytes()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"cache": "http://data.openaddresses.io/cache/x.zip", "fingerprint": "abc"},
            "http://data.openaddresses.io/cache/x.zip",
        ),
        ({"cache": "https://data.openaddresses.io/cache/x.zip", "fingerprint": "abc"}, None),
        ({"cache": "http://data.openaddresses.io/cache/x.zip", "fingerprint": "other"}, None),
        ({"cache": "http://data.openaddresses.io/cache/x.zip"}, None),
        ({}, None),
    ],
)
def test_legacy_cache_url(data: dict[str, str], expected: str | None) -> None:
    assert legacy_cache_url(data, "abc") == expected


# --- settings ---------------------------------------------------------------------------------------------------


def test_settings_defaults_are_production() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert not settings.allow_private_hosts
    assert not settings.allow_file_urls
    assert (settings.connect_timeout, settings.read_timeout, settings.ftp_timeout) == (180.0, 180.0, 180.0)
    assert settings.retry_delays == (10.0, 60.0)
    assert settings.max_retry_after == 300.0
    assert settings.tls_fallback
    assert settings.max_redirects == 10


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "OPENADDR_ALLOW_PRIVATE_HOSTS": "true",
            "OPENADDR_ALLOWED_PRIVATE_NETWORKS": "10.0.0.0/8, fd00::/8",
            "OPENADDR_ALLOW_FILE_URLS": "yes",
            "OPENADDR_READ_TIMEOUT": "2.5",
            "OPENADDR_RETRY_DELAYS": "1, 2, 3",
            "OPENADDR_TLS_FALLBACK": "0",
            "OPENADDR_MAX_DOWNLOAD_BYTES": "1000",
            "OPENADDR_MAX_DECOMPRESSED_BYTES": "5000",
            "OPENADDR_MAX_COMPRESSION_RATIO": "50",
            "OPENADDR_DOWNLOAD_TIME_LIMIT": "none",
            "OPENADDR_CONFORM_TIME_LIMIT": "60",
        }
    )
    assert settings.allow_private_hosts
    assert settings.allowed_private_networks == ("10.0.0.0/8", "fd00::/8")
    assert settings.allow_file_urls
    assert settings.read_timeout == 2.5
    assert settings.retry_delays == (1.0, 2.0, 3.0)
    assert not settings.tls_fallback
    assert settings.max_download_bytes == 1000
    assert settings.download_time_limit is None
    assert settings.conform_time_limit == 60.0
    from openaddr.readers.archives import ArchiveLimits

    limits = ArchiveLimits.from_settings(settings)
    assert (limits.max_total_bytes, limits.max_ratio) == (5000, 50.0)
    assert Settings.from_env({"OPENADDR_RETRY_DELAYS": ""}).retry_delays == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPENADDR_ALLOW_PRIVATE_URLS", "maybe"),
        ("OPENADDR_READ_TIMEOUT", "-1"),
        ("OPENADDR_READ_TIMEOUT", "fast"),
        ("OPENADDR_MAX_DOWNLOAD_BYTES", "1.5"),
        ("OPENADDR_RETRY_DELAYS", "10,soon"),
        ("OPENADDR_ALLOWED_PRIVATE_NETWORKS", "not-a-network"),
        ("OPENADDR_DOWNLOAD_TIME_LIMIT", "0"),
    ],
)
def test_settings_refuse_malformed_values(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: value})
