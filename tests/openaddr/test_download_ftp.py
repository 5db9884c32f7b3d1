"""FTP downloads (processing.md §3.3) against the loopback pyftpdlib server of ``tests/servers.py``."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.download import (
    DownloadConnectionError,
    DownloadTooLargeError,
    EmptyDownloadError,
    FTPReplyError,
    PrivateAddressError,
    download,
)
from openaddr.download.cache import cache_stem
from openaddr.settings import Settings
from openaddr.sources import LayerEntry, Source
from tests.servers import FTP_PASSWORD, FTP_USER, fast_settings

if TYPE_CHECKING:
    from tests.servers import LoopbackFTPServer


def make_entry(url: str, protocol: str = "ftp") -> LayerEntry:
    data: dict[str, Any] = {"name": "county", "protocol": protocol, "data": url}
    document = {"schema": 2, "coverage": {"country": "us"}, "layers": {"addresses": [data]}}
    source = Source(path=Path("us-test.json"), document=document, version=2, original=document)
    return LayerEntry(source, "addresses", 0, "county", data)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_anonymous_download(
    ftp_server: LoopbackFTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    url = ftp_server.url("/nl.zip")
    seen: list[int] = []
    result = download(make_entry(url), tmp_path, settings=download_settings, progress=seen.append)
    original = fixtures / "data" / "nl.zip"
    assert result.path == tmp_path / f"{cache_stem('addresses', 'county', url)}.zip"
    assert result.fingerprint == md5_of(original)
    assert result.path.read_bytes() == original.read_bytes()
    assert result.size == original.stat().st_size
    assert result.content_type is None
    assert seen[-1] == result.size
    assert listing(tmp_path) == [result.path.name]


def test_path_with_spaces(
    ftp_server: LoopbackFTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    # As corpus/sources/us/in/hamilton.json writes it: a raw space in the path, and a leading space.
    raw = f" ftp://127.0.0.1:{ftp_server.port}/Address Points/E911 Addresses.zip"
    result = download(make_entry(raw), tmp_path, settings=download_settings)
    assert result.url == f"ftp://127.0.0.1:{ftp_server.port}/Address%20Points/E911%20Addresses.zip"
    assert result.fingerprint == md5_of(fixtures / "data" / "us-or-portland.zip")


def test_text_file(
    ftp_server: LoopbackFTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    result = download(
        make_entry(ftp_server.url("/us-pa-bucks.geojson")), tmp_path, settings=download_settings
    )
    assert result.path.suffix == ".geojson"
    assert result.fingerprint == md5_of(fixtures / "data" / "us-pa-bucks.geojson")


def test_credentials_from_the_url(
    ftp_server: LoopbackFTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    url = ftp_server.url("/private/nl.zip", user=FTP_USER, password=FTP_PASSWORD)
    result = download(make_entry(url), tmp_path, settings=download_settings)
    assert result.fingerprint == md5_of(fixtures / "data" / "nl.zip")


def test_anonymous_user_cannot_read_the_account_folder(
    ftp_server: LoopbackFTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(FTPReplyError, match="550"):
        download(make_entry(ftp_server.url("/private/nl.zip")), tmp_path, settings=download_settings)


def test_wrong_password(ftp_server: LoopbackFTPServer, download_settings: Settings, tmp_path: Path) -> None:
    url = ftp_server.url("/private/nl.zip", user=FTP_USER, password="wrong")
    with pytest.raises(
        FTPReplyError, match=r"^FTP error from ftp://openaddr:\*\*\*@127\.0\.0\.1:\d+/private/nl\.zip: 530"
    ):
        download(make_entry(url), tmp_path, settings=download_settings)
    assert listing(tmp_path) == []


def test_missing_file_is_a_550_failure(
    ftp_server: LoopbackFTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    url = ftp_server.url("/GIS/missing.zip")
    with pytest.raises(FTPReplyError) as info:
        download(make_entry(url), tmp_path, settings=download_settings)
    assert info.value.code == 550
    assert not info.value.retryable
    assert str(info.value).startswith(f"FTP error from {url}: 550 ")
    assert listing(tmp_path) == []


def test_empty_file(ftp_server: LoopbackFTPServer, download_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(EmptyDownloadError, match="^Empty download from "):
        download(make_entry(ftp_server.url("/empty.csv")), tmp_path, settings=download_settings)
    assert listing(tmp_path) == []


def test_download_too_large(
    ftp_server: LoopbackFTPServer, download_settings: Settings, tmp_path: Path
) -> None:
    settings = download_settings.replace(max_download_bytes=100)
    with pytest.raises(DownloadTooLargeError, match="^Download too large"):
        download(make_entry(ftp_server.url("/nl.zip")), tmp_path, settings=settings)
    assert listing(tmp_path) == []


def test_ftp_url_of_an_http_entry(
    ftp_server: LoopbackFTPServer, download_settings: Settings, fixtures: Path, tmp_path: Path
) -> None:
    # corpus/sources/us/ak/kenai_peninsula_borough.json: protocol http, ftp:// URL; the scheme wins.
    result = download(
        make_entry(ftp_server.url("/nl.zip"), protocol="http"), tmp_path, settings=download_settings
    )
    assert result.fingerprint == md5_of(fixtures / "data" / "nl.zip")


def test_private_address_is_refused(
    ftp_server: LoopbackFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_URLS", raising=False)
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_HOSTS", raising=False)
    settings = fast_settings(Settings.from_env())
    with pytest.raises(PrivateAddressError, match="^Refusing to fetch from a private address"):
        download(make_entry(ftp_server.url("/nl.zip")), tmp_path, settings=settings)


def test_connection_refused(download_settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadConnectionError, match="Could not connect to"):
        download(make_entry(f"ftp://127.0.0.1:{port}/nl.zip"), tmp_path, settings=download_settings)


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        ("421 Too many users", True),
        ("425 No data connection", True),
        ("426 Aborted", True),
        ("450 Busy", False),
        ("550 Not found", False),
    ],
)
def test_transient_replies_are_retried(reply: str, retryable: bool) -> None:
    assert FTPReplyError(reply, "ftp://example.com/a.zip").retryable is retryable
