"""URL hygiene, transport choice, cache file names and types (processing.md §3.1, §3.4)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from openaddr.download import UnsupportedURLError
from openaddr.download.cache import (
    cache_name,
    cache_stem,
    choose_extension,
    content_type_extension,
    disposition_filename,
    sniff_extension,
    url_extension,
)
from openaddr.download.urls import clean_url, host_header, redact_url, url_transport

if TYPE_CHECKING:
    from pathlib import Path


def _entry_data(corpus_sources: Path, name: str, layer: str = "addresses", index: int = 0) -> dict:
    document = json.loads((corpus_sources / name).read_text(encoding="utf-8"))
    return document["layers"][layer][index]


# The corpus files §3.1 names, with the URL each must become (worked out by hand: é = C3 A9, ç = C3 A7 and
# â = C3 A2 in UTF-8; a space is %20; an existing %3D or %2F stays as it is).
CORPUS_URLS = [
    (
        "at/31255.json",
        "addresses",
        "https://v2.openaddresses.io/batch-prod/upload/1/9mefi42sa08/at-31255.zip",
    ),
    (
        "us/in/hamilton.json",
        "addresses",
        "ftp://ftp.hamiltoncounty.in.gov/GIS/Data/Address%20Points/E911_Addresses_web.zip",
    ),
    (
        "pf/countrywide.json",
        "addresses",
        "https://services.arcgis.com/L4H4rU26VyhEF588/arcgis/rest/services/"
        "Adressage_en_Polyn%C3%A9sie_fran%C3%A7aise_WFL1/FeatureServer/0/query?outFields=*&where=1%3D1&f=geojson",
    ),
    (
        "pf/countrywide.json",
        "buildings",
        "https://services.arcgis.com/L4H4rU26VyhEF588/arcgis/rest/services/"
        "B%C3%A2timent_BD_TOPO_Edification/FeatureServer/17/query?outFields=*&where=1%3D1&f=geojson",
    ),
    (
        "us/countrywide.json",
        "addresses",
        "https://data.transportation.gov/download/yw36-suxr/application%2Fx-zip-compressed",
    ),
]


@pytest.mark.parametrize(("name", "layer", "expected"), CORPUS_URLS)
def test_clean_url_of_corpus_sources(corpus_sources: Path, name: str, layer: str, expected: str) -> None:
    raw = _entry_data(corpus_sources, name, layer)["data"]
    assert clean_url(raw) == expected
    assert clean_url(expected) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\thttp://example.com/a.zip \n", "http://example.com/a.zip"),
        ("HTTP://Example.COM/A.zip", "http://example.com/A.zip"),
        ("http://example.com/100%/x.csv", "http://example.com/100%25/x.csv"),
        ("http://example.com/a%20b.zip", "http://example.com/a%20b.zip"),
        (
            "http://example.com/q?name=Québec city&x=<1>",
            "http://example.com/q?name=Qu%C3%A9bec%20city&x=%3C1%3E",
        ),
        ("http://example.com/a.zip#part", "http://example.com/a.zip"),
        ("https://bücher.example:8443/x", "https://xn--bcher-kva.example:8443/x"),
        ("ftp://us er:p@ss@ftp.example.com/a b", "ftp://us%20er:p%40ss@ftp.example.com/a%20b"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        # Tabs and line breaks inside a URL are dropped (as WHATWG parsers do): no header injection.
        ("http://example.com/a\r\nHost: evil/x", "http://example.com/aHost:%20evil/x"),
    ],
)
def test_clean_url(raw: str, expected: str) -> None:
    assert clean_url(raw) == expected


@pytest.mark.parametrize("raw", ["example.com/a.zip", "http:///a.zip", "http://example.com:99999/", "   "])
def test_clean_url_refuses(raw: str) -> None:
    with pytest.raises(UnsupportedURLError):
        clean_url(raw)


def test_every_corpus_url_cleans_to_ascii(corpus_sources: Path) -> None:
    """Every http/ftp/ESRI URL of the corpus cleans to an ASCII URL without spaces, idempotently, same host."""
    count = 0
    for path in sorted(corpus_sources.rglob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        layers = document.get("layers") if isinstance(document, dict) else None
        for entries in (layers or {}).values():
            for entry in entries:
                raw = entry.get("data")
                if not isinstance(raw, str):
                    continue
                cleaned = clean_url(raw)
                assert cleaned.isascii(), (path, raw)
                assert " " not in cleaned, (path, raw)
                assert clean_url(cleaned) == cleaned, (path, raw)
                assert urlsplit(cleaned).hostname == urlsplit(raw.strip()).hostname, (path, raw)
                count += 1
    assert count > 4800


@pytest.mark.parametrize(
    ("name", "layer", "transport", "warned"),
    [
        ("us/ak/kenai_peninsula_borough.json", "addresses", "ftp", True),  # protocol http, ftp:// URL
        ("us/ak/kenai_peninsula_borough.json", "parcels", "ftp", True),
        ("us/mn/mcleod.json", "addresses", "http", True),  # protocol ftp, https:// URL
        ("us/in/hamilton.json", "addresses", "ftp", False),
        ("at/31255.json", "addresses", "http", False),
    ],
)
def test_scheme_wins_over_protocol(
    corpus_sources: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    layer: str,
    transport: str,
    warned: bool,
) -> None:
    data = _entry_data(corpus_sources, name, layer)
    with caplog.at_level(logging.WARNING, logger="openaddr.download.urls"):
        assert url_transport(data["protocol"], clean_url(data["data"])) == transport
    assert any("scheme" in r.getMessage() for r in caplog.records) is warned


@pytest.mark.parametrize(
    ("protocol", "url", "transport"),
    [
        ("ESRI", "https://example.com/arcgis/rest/services/x/FeatureServer/0", "esri"),
        ("esri", "ftp://example.com/x", "esri"),
        ("HTTP", "https://example.com/a.zip", "http"),
        ("http", "file:///tmp/a.zip", "file"),
    ],
)
def test_url_transport(protocol: str, url: str, transport: str) -> None:
    assert url_transport(protocol, url) == transport


@pytest.mark.parametrize("url", ["gopher://example.com/a", "s3://bucket/a.zip", "data:text/csv,a"])
def test_url_transport_refuses_other_schemes(url: str) -> None:
    with pytest.raises(UnsupportedURLError, match="Unsupported URL scheme"):
        url_transport("http", url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://user:secret@example.com/a.zip", "ftp://user:***@example.com/a.zip"),
        ("ftp://user@example.com/a.zip", "ftp://user@example.com/a.zip"),
        ("https://example.com/a.zip", "https://example.com/a.zip"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "header"),
    [
        ("http://example.com/a", "example.com"),
        ("http://example.com:80/a", "example.com"),
        ("https://example.com:8443/a", "example.com:8443"),
        ("http://[::1]:8080/a", "[::1]:8080"),
    ],
)
def test_host_header(url: str, header: str) -> None:
    assert host_header(url) == header


# --- cache file name (§3.4) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hashed", "ext"),
    [
        (
            "https://v2.openaddresses.io/batch-prod/upload/1/9mefi42sa08/at-31255.zip",
            "v2.openaddresses.io/batch-prod/upload/1/9mefi42sa08/at-31255",
            ".zip",
        ),
        (
            "https://data.transportation.gov/download/yw36-suxr/application%2Fx-zip-compressed",
            "data.transportation.gov/download/yw36-suxr/application%2Fx-zip-compressed",
            ".zip",
        ),
        ("http://example.com:8080/a.b/c.csv?x=1", "example.com:8080/a.b/c", ".csv"),
    ],
)
def test_cache_name(url: str, hashed: str, ext: str) -> None:
    digest = hashlib.sha1(hashed.encode("utf-8")).hexdigest()[:8]
    assert cache_stem("addresses", "city", url) == f"addresses-city-{digest}"
    assert cache_name("addresses", "city", url, ext) == f"addresses-city-{digest}{ext}"


def test_cache_stem_keeps_names_inside_the_work_directory() -> None:
    stem = cache_stem("addresses", "../../etc/passwd", "http://example.com/a.zip")
    assert "/" not in stem
    assert stem.startswith("addresses-.._.._etc_passwd-")


@pytest.mark.parametrize(
    ("url", "ext"),
    [
        ("https://example.com/a/at-31255.zip", ".zip"),
        ("https://example.com/a/A.ZIP", ".zip"),
        ("https://example.com/download/13_osoitteet_2018-05-15.opt", ".opt"),  # corpus fi/*.json
        ("https://example.com/data/addresses.shz", ".shz"),
        ("https://example.com/a.b/c", None),  # no extension
        ("https://example.com/export.aspx", None),
        ("https://example.com/cgi-bin/get.cgi", None),
        ("https://example.com/get.php", None),
        ("https://example.com/x.asp", None),
        ("https://example.com/x.do", None),
        ("https://example.com/a.zip?token=1", None),  # a query: the extension is not trusted
        ("https://example.com/download/yw36-suxr/application%2Fx-zip-compressed", None),
        ("https://example.com/a.z%20ip", None),  # not a file-name extension
    ],
)
def test_url_extension(url: str, ext: str | None) -> None:
    assert url_extension(url) == ext


@pytest.mark.parametrize(
    ("content_type", "ext"),
    [
        ("application/zip", ".zip"),
        ("application/x-zip-compressed", ".zip"),
        ("application/vnd.geo+json", ".json"),
        ("application/json; charset=utf-8", ".json"),
        ("text/csv", ".csv"),
        ("TEXT/CSV; header=present", ".csv"),
        ("text/plain", ".txt"),
        ("text/xml", ".xml"),
        ("application/xml", ".xml"),
        ("application/octet-stream", None),
        ("application/x-unknown-thing", None),
        ("", None),
        (None, None),
    ],
)
def test_content_type_extension(content_type: str | None, ext: str | None) -> None:
    assert content_type_extension(content_type) == ext


@pytest.mark.parametrize(
    ("header", "filename"),
    [
        ('attachment; filename="addresses.zip"', "addresses.zip"),
        ("attachment; filename=addresses.csv", "addresses.csv"),
        ("attachment; filename*=UTF-8''adresses%20%C3%A9t%C3%A9.zip", "adresses été.zip"),
        ("inline", None),
        (None, None),
    ],
)
def test_disposition_filename(header: str | None, filename: str | None) -> None:
    assert disposition_filename(header) == filename


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00", ".zip"),
        (b"\x1f\x8b\x08\x00", ".gz"),
        (b'{"type": "FeatureCollection"', ".json"),
        (b"\xef\xbb\xbf\r\n  [1, 2]", ".json"),
        (b"<?xml version='1.0'?>", ".xml"),
        (b"NUMBER,STREET,CITY\r\n12,Main St,Caf\xe9\r\n", ".csv"),  # Latin-1 text is text too
        (b"\x00\x01\x02\x03binary", ".bin"),
    ],
)
def test_sniff_extension(head: bytes, ext: str) -> None:
    assert sniff_extension(head) == ext


ZIP_HEAD = b"PK\x03\x04\x14\x00"


@pytest.mark.parametrize(
    ("url", "content_type", "disposition", "head", "ext"),
    [
        # The URL's extension wins when it can be trusted, whatever the server says.
        ("http://h/a.zip", "text/html", None, b"<html>", ".zip"),
        # No usable extension: the Content-Type decides.
        (
            "http://h/download/yw36-suxr/application%2Fx-zip-compressed",
            "application/x-zip-compressed",
            None,
            ZIP_HEAD,
            ".zip",
        ),
        ("http://h/export.aspx", "text/csv; charset=utf-8", None, b"a,b\n", ".csv"),
        ("http://h/a.zip?x=1", "application/json", None, b"{}", ".json"),
        # A Content-Disposition with the same extension keeps the Content-Type's guess ...
        ("http://h/get", "application/zip", 'attachment; filename="a.zip"', ZIP_HEAD, ".zip"),
        # ... a different one drops it and the first bytes decide.
        ("http://h/get", "text/plain", 'attachment; filename="a.zip"', ZIP_HEAD, ".zip"),
        ("http://h/get", "application/zip", 'attachment; filename="a.csv"', b"a,b\n", ".csv"),
        # No Content-Type, or a generic one: the first bytes decide.
        ("http://h/get", None, None, b'{"type":', ".json"),
        ("http://h/get", "application/octet-stream", None, b"\x1f\x8b\x08", ".gz"),
        ("http://h/get", "application/octet-stream", 'attachment; filename="x.zip"', ZIP_HEAD, ".zip"),
    ],
)
def test_choose_extension(
    url: str, content_type: str | None, disposition: str | None, head: bytes, ext: str
) -> None:
    assert choose_extension(url, content_type, disposition, head) == ext
