"""The ArcGIS REST downloader (processing.md §3.6) against the loopback replay of the original Machine's recordings.

Expected values come from reading the recorded responses in ``fixtures/machine/data/`` and the source files here
(features with a usable geometry, their attributes, centroids computed with shapely from the recorded geometry,
WKT written with ``%.16g`` by hand), never from the downloader's own output.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyproj
import pytest
import shapely
from esri_server import esri_server_fixture  # noqa: F401  (the esri_server fixture)

from openaddr import cli
from openaddr.download import download
from openaddr.download.esri import EsriCsvWriter, EsriTokenRequired, download_esri
from openaddr.errors import DownloadError, SourceProblem
from openaddr.settings import Settings
from openaddr.sources import LayerEntry, load_source

if TYPE_CHECKING:
    from pathlib import Path

    from esri_server import ReplayServer

OA = ["OA:x", "OA:y", "OA:geom"]
TOKEN_LINE = "Could not download ESRI source data: Could not retrieve layer metadata: Token Required"


class FastSettings(Settings):
    """Production settings with the loopback server allowed and the §3.6.4 back-off shrunk for tests."""

    allow_private_hosts: bool = True
    esri_timeout: float = 5.0
    esri_retry_delays: tuple[float, ...] = (0.01, 0.01)


SETTINGS = FastSettings()

#: source file, recording, the attribute columns of §3.6.3 read off the source's conform by hand.
RECORDED = [
    ("us-ca-carson.json", "us-ca-carson", ["SITECITY", "SITENUMBER", "SITESTREET", "SITEZIP"]),
    (
        "us-ny-orange.json",
        "us-ny-orange",
        ["CityStateZip", "SteetAddress", "StreetAddress", "UnitNumber", "UnitType"],
    ),
    ("ua-63-city_of_kharkiv.json", "ua-kharkiv", ["FULLADDRU", "PREFIX", "SUFIXRU"]),
    (
        "us/ks/brown_county.json",
        "us-ks-brown",
        ["add_num", "road_name", "road_post", "road_pre", "road_type", "zip"],
    ),
    (
        "us/nm/washington.json",
        "us-nm-washington",
        [
            "BLDG_NUM",
            "CITY_USPS",
            "PREFIXTYPE",
            "PREFIX_DIR",
            "STREETNAME",
            "STREETTYPE",
            "SUFFIX_DIR",
            "ZIP",
        ],
    ),
    (
        "us/pa/lancaster.json",
        "us-pa-lancaster",
        ["ADRNUM", "FDPRE", "FDSUF", "FNAME", "FTYPE", "MUNI", "UNITNUM"],
    ),
    (
        "us/tx/city_of_waco.json",
        "us-tx-waco",
        [
            "situs_city",
            "situs_num",
            "situs_state",
            "situs_street",
            "situs_street_prefx",
            "situs_street_sufix",
            "situs_zip",
        ],
    ),
]


# -- helpers that read the recordings independently -----------------------------------------------------------


def entry_for(fixtures: Path, source: str, url: str) -> LayerEntry:
    """The first address entry of a fixture source, its ``data`` pointed at ``url``."""
    entry = load_source(fixtures / "sources" / source).entries(layer="addresses")[0]
    return dataclasses.replace(entry, data={**entry.data, "data": url})


def recorded_features(fixtures: Path, recording: str) -> list[dict[str, Any]]:
    page = json.loads((fixtures / "data" / f"{recording}-0.json").read_text(encoding="utf-8"))
    return page["features"]


def numbers(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [n for item in value for n in numbers(item)]
    return [value]


def usable(geometry: Any) -> bool:
    """A geometry the Machine keeps: present, non-empty, every coordinate a finite number (§3.6.5)."""
    if not geometry:
        return False
    coords = (
        [geometry.get("x"), geometry.get("y")] if "x" in geometry else numbers(next(iter(geometry.values())))
    )
    return bool(coords) and all(isinstance(c, (int, float)) and math.isfinite(c) for c in coords)


def expected_point(geometry: dict[str, Any]) -> tuple[float, float]:
    """GEOS's centroid of the recorded geometry (points, single paths and single rings occur in the recordings)."""
    if "x" in geometry:
        return geometry["x"], geometry["y"]
    if "paths" in geometry:
        (path,) = geometry["paths"]
        centroid = shapely.LineString(path).centroid
    else:
        (ring,) = geometry["rings"]
        centroid = shapely.Polygon(ring).centroid
    return centroid.x, centroid.y


def expected_wkt(geometry: dict[str, Any]) -> str:
    def pairs(points: list[list[float]]) -> str:
        return ", ".join(f"{x:.16g} {y:.16g}" for x, y in points)

    if "x" in geometry:
        return f"POINT ({geometry['x']:.16g} {geometry['y']:.16g})"
    if "paths" in geometry:
        (path,) = geometry["paths"]
        return f"LINESTRING ({pairs(path)})"
    (ring,) = geometry["rings"]
    return f"POLYGON (({pairs(ring)}))"


def cell(value: Any) -> str:
    return "" if value is None else str(value)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


# -- the recorded layers --------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("source", "recording", "columns"), RECORDED)
def test_recorded_layer_is_written_as_the_cache_csv(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, source: str, recording: str, columns: list[str]
) -> None:
    entry = entry_for(fixtures, source, esri_server.layer_url(recording))
    result = download_esri(entry, tmp_path, settings=SETTINGS)

    features = [f for f in recorded_features(fixtures, recording) if usable(f.get("geometry"))]
    rows = read_csv(result.path)
    assert rows[0] == columns + OA
    assert len(rows) - 1 == len(features)
    for row, feature in zip(rows[1:], features, strict=True):
        attributes = feature["attributes"]
        assert row[: len(columns)] == [cell(attributes.get(name)) for name in columns]
        x, y = expected_point(feature["geometry"])
        assert row[-3:] == [repr(round(x, 7)), repr(round(y, 7)), expected_wkt(feature["geometry"])]

    raw = result.path.read_bytes()
    assert raw.endswith(b"\r\n")
    assert raw.count(b"\r\n") == len(rows)  # no bare LF anywhere: CRLF after every line
    assert result.fingerprint == hashlib.md5(raw).hexdigest()
    assert result.size == len(raw)
    parts = urlsplit(result.url)
    digest = hashlib.sha1((parts.netloc + parts.path).encode()).hexdigest()[:8]
    assert result.path == tmp_path / f"addresses-{entry.name}-{digest}.csv"
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]  # no temporary file left

    pages = esri_server.queries("features")
    assert pages
    for page in pages:
        assert (page.params["outFields"], page.params["outSR"], page.params["f"]) == ("*", "4326", "json")
        assert page.params["returnGeometry"] == "true"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("recording", "kinds"),
    [
        # supportsPagination (advancedQueryCapabilities) and a count: offset paging
        ("us-pa-lancaster", ["metadata", "count", "features"]),
        # supportsStatistics, no pagination: min/max statistics checked by returnIdsOnly, then OID ranges
        ("ua-kharkiv", ["metadata", "count", "statistics", "ids", "features"]),
        # neither: every object id, then chunks of them
        ("us-ny-orange", ["metadata", "count", "ids", "features"]),
    ],
)
def test_paging_strategy_follows_the_metadata(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, recording: str, kinds: list[str]
) -> None:
    source = next(s for s, r, _ in RECORDED if r == recording)
    download_esri(entry_for(fixtures, source, esri_server.layer_url(recording)), tmp_path, settings=SETTINGS)
    assert [r.kind for r in esri_server.queries()] == kinds


@pytest.mark.integration
def test_offset_advances_by_the_features_that_arrived(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    # The server caps pages at 7 although maxRecordCount says 10: offsets must go 0, 7, 14, … not 0, 10, 20.
    # One page at a time, so that the requests are exactly these (concurrently, pages planned ahead are dropped
    # and planned again: test_download_esri_concurrent.py).
    url = esri_server.layer_url("us-pa-lancaster", cap=7, metadata={"maxRecordCount": 10})
    settings = FastSettings(esri_concurrency=1)
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=settings)
    recorded = len(recorded_features(fixtures, "us-pa-lancaster"))
    pages = esri_server.queries("features")
    assert [int(p.params["resultOffset"]) for p in pages] == list(range(0, recorded, 7))
    assert {p.params["resultRecordCount"] for p in pages} == {"10"}
    assert len(read_csv(result.path)) - 1 == recorded


@pytest.mark.integration
def test_oid_enumeration_pages_by_chunks_of_the_sorted_ids(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    url = esri_server.layer_url("us-ks-brown", metadata={"maxRecordCount": 10})
    result = download_esri(entry_for(fixtures, "us/ks/brown_county.json", url), tmp_path, settings=SETTINGS)
    ids = json.loads((fixtures / "data" / "us-ks-brown-ids-only.json").read_text())["objectIds"]
    ids.sort()
    chunks = [ids[i : i + 10] for i in range(0, len(ids), 10)]
    wheres = [p.params["where"] for p in esri_server.queries("features")]
    # Each chunk once; concurrent pages arrive in any order (they are written in this one).
    assert sorted(wheres) == sorted(f"objectid >= {c[0]} AND objectid <= {c[-1]}" for c in chunks)
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-ks-brown"))


@pytest.mark.integration
def test_statistics_pages_run_from_min_minus_one_to_max(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    download_esri(
        entry_for(fixtures, "ua-63-city_of_kharkiv.json", esri_server.layer_url("ua-kharkiv")),
        tmp_path,
        settings=SETTINGS,
    )
    stats = json.loads((fixtures / "data" / "ua-kharkiv-statistics.json").read_text())
    low, high = stats["features"][0]["attributes"]["THE_MIN"], stats["features"][0]["attributes"]["THE_MAX"]
    wheres = [p.params["where"] for p in esri_server.queries("features")]
    assert wheres == [f"OBJECTID > {low - 1} AND OBJECTID <= {high}"]


@pytest.mark.integration
def test_without_count_statistics_or_ids_the_extent_is_queried(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    no_paging = {"supportsPagination": False, "advancedQueryCapabilities": {"supportsPagination": False}}
    url = esri_server.layer_url(
        "us-pa-lancaster", metadata=no_paging, unsupported=("count", "statistics", "ids")
    )
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    pages = esri_server.queries("features")
    assert [p.params["geometryType"] for p in pages] == ["esriGeometryEnvelope"]
    extent = json.loads((fixtures / "data" / "us-pa-lancaster-metadata.json").read_text())["extent"]
    assert json.loads(pages[0].params["geometry"]) == extent
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.integration
def test_no_count_falls_back_from_offset_paging(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    # Lancaster supports pagination and statistics, but without a count offset paging cannot tell when to stop;
    # its statistics were not recorded (the server answers an error), so the id list is used.
    url = esri_server.layer_url("us-pa-lancaster", unsupported=("count",))
    download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert [r.kind for r in esri_server.queries()] == ["metadata", "count", "statistics", "ids", "features"]


# -- failures -------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_token_required_is_its_own_problem_with_its_exact_log_line(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = entry_for(fixtures, "us/tx/runnels.json", esri_server.layer_url("us-tx-runnels"))
    caplog.set_level(logging.INFO, logger="openaddr")
    with pytest.raises(EsriTokenRequired) as caught:
        download_esri(entry, tmp_path, settings=SETTINGS)
    assert caught.value.problem is SourceProblem.no_esri_token
    assert isinstance(caught.value, DownloadError)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [TOKEN_LINE]
    assert not any("Could not download source data" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_metadata_failure_is_a_download_failure(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("no-such-layer"))
    with pytest.raises(DownloadError) as caught:
        download_esri(entry, tmp_path, settings=SETTINGS)
    assert str(caught.value).startswith("Could not retrieve layer metadata: HTTP 404 from http://127.0.0.1:")
    assert caught.value.problem is SourceProblem.download_source_failed


@pytest.mark.integration
def test_the_download_dispatcher_hands_esri_entries_over(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("us-pa-lancaster"))
    result = download(entry, tmp_path, settings=SETTINGS, deadline=time.time() + 60)
    assert result.path.suffix == ".csv"
    assert result.content_type is None
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.parametrize(
    "url",
    [
        # corpus/sources/us/mo/dallas.json: a Geocortex endpoint, not ArcGIS REST
        "https://sites.integritygis.com/Geocortex/Essentials/REST/sites/Dallas_County_MO_Public/map/mapservices/1/layers/4",
        "https://example.com/arcgis/rest/services/Parcels/MapServer",
        "https://example.com/arcgis/rest/services/Parcels/MapServer/0/query",
        "https://example.com/arcgis/rest/services/Parcels/ImageServer/0",
        "ftp://example.com/arcgis/rest/services/Parcels/MapServer/0",
    ],
)
def test_not_a_layer_url_fails_before_any_request(fixtures: Path, tmp_path: Path, url: str) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", url)
    with pytest.raises(DownloadError, match="^Not an ArcGIS REST layer URL") as caught:
        download_esri(entry, tmp_path, settings=SETTINGS)
    assert caught.value.problem is SourceProblem.download_source_failed


def test_the_geocortex_corpus_entry_is_rejected(corpus_sources: Path, tmp_path: Path) -> None:
    (entry,) = load_source(corpus_sources / "us" / "mo" / "dallas.json").entries(layer="addresses")
    assert "Geocortex" in entry.data["data"]
    with pytest.raises(DownloadError, match="^Not an ArcGIS REST layer URL"):
        download_esri(entry, tmp_path, settings=SETTINGS)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ({"page_status": 500}, "Could not retrieve this chunk of objects: HTTP 500 from "),
        ({"page_status": 503}, "Could not retrieve this chunk of objects: HTTP 503 from "),
        (
            {"page_status": 404, "retry_after": "1"},
            "Could not retrieve this chunk of objects: HTTP 404 from ",
        ),
        ({"page_error": True}, "Could not retrieve this chunk of objects: Failed to execute query."),
    ],
)
def test_a_failing_page_fails_the_download_at_once(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, behaviour: dict[str, Any], message: str
) -> None:
    url = esri_server.layer_url("us-pa-lancaster", **behaviour)
    with pytest.raises(DownloadError) as caught:
        download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert str(caught.value).startswith(message)
    assert len(esri_server.queries("features")) == 1  # an answer is final: never retried, never skipped
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
@pytest.mark.parametrize("status", [429, 503])
def test_a_page_asking_to_retry_after_is_retried_after_that_wait(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("openaddr.retry.time.sleep", slept.append)
    url = esri_server.layer_url("us-pa-lancaster", page_status=status, failures=1, retry_after="7")
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert slept == [7.0]  # the server's wait, not the 10 ms of the schedule
    assert len(esri_server.queries("features")) == 2
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.integration
def test_a_retry_after_past_the_deadline_ends_the_download_at_once(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("openaddr.retry.time.sleep", pytest.fail)  # never sleeps past the deadline
    url = esri_server.layer_url("us-pa-lancaster", page_status=429, failures=1, retry_after="120")
    entry = entry_for(fixtures, "us/pa/lancaster.json", url)
    with pytest.raises(DownloadError, match=r"^Timed out after 0:00:\d\d \(429 response from "):
        download_esri(entry, tmp_path, settings=SETTINGS, deadline=time.time() + 30)
    assert len(esri_server.queries("features")) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_page_still_throttled_after_the_retries_names_its_answer(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    url = esri_server.layer_url("us-pa-lancaster", page_status=503, retry_after="0")
    with pytest.raises(DownloadError) as caught:
        download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert str(caught.value) == (
        f"Could not retrieve this chunk of objects: HTTP 503 from {url.split('?')[0]}/query"
        " (lancaster addresses/primary, offset 0)"
    )
    assert len(esri_server.queries("features")) == len(SETTINGS.esri_retry_delays) + 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_offset_download_short_of_the_count_is_a_failure(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    recorded = len(recorded_features(fixtures, "us-pa-lancaster"))
    url = esri_server.layer_url("us-pa-lancaster", extra_count=5, cap=12)
    with pytest.raises(DownloadError) as caught:
        download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert str(caught.value) == f"Partial download: got {recorded} of {recorded + 5} features"
    assert caught.value.problem is SourceProblem.download_source_failed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_shortfall_in_oid_mode_is_a_warning(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # us-ca-carson: the server reports 30551 features; the recording holds 6, one without geometry.
    caplog.set_level(logging.INFO, logger="openaddr")
    download_esri(entry_for(fixtures, "us-ca-carson.json", esri_server.layer_url("us-ca-carson")), tmp_path)
    count = json.loads((fixtures / "data" / "us-ca-carson-count-only.json").read_text())["count"]
    features = recorded_features(fixtures, "us-ca-carson")
    skipped = sum(not usable(f.get("geometry")) for f in features)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"Got {len(features)} of {count} features (the oids method)" in warnings
    assert f"Skipped {skipped} of {len(features)} features without usable geometry" in warnings


@pytest.mark.integration
@pytest.mark.parametrize(("drops", "ok"), [(2, True), (3, False)])
def test_connection_errors_are_retried(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, drops: int, ok: bool
) -> None:
    url = esri_server.layer_url("us-pa-lancaster", drop=drops)
    entry = entry_for(fixtures, "us/pa/lancaster.json", url)
    if ok:
        result = download_esri(entry, tmp_path, settings=SETTINGS)
        assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))
    else:
        with pytest.raises(
            DownloadError, match="^Could not retrieve this chunk of objects: Could not connect"
        ):
            download_esri(entry, tmp_path, settings=SETTINGS)
    assert len(esri_server.queries("features")) == min(drops + 1, len(SETTINGS.esri_retry_delays) + 1)


@pytest.mark.integration
def test_a_page_that_times_out_is_retried(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    url = esri_server.layer_url("us-pa-lancaster", slow=1, delay=0.5)
    settings = FastSettings(esri_timeout=0.2)
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=settings)
    assert len(esri_server.queries("features")) == 2
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.integration
def test_an_envelope_that_times_out_is_split(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    # The replay answers every box with every recorded feature: the four children overlap completely, and the
    # features are de-duplicated by object id.
    no_paging = {"supportsPagination": False, "advancedQueryCapabilities": {"supportsPagination": False}}
    url = esri_server.layer_url(
        "us-pa-lancaster", metadata=no_paging, unsupported=("count", "statistics", "ids"), slow=1, delay=0.5
    )
    settings = FastSettings(esri_timeout=0.2)
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=settings)
    boxes = [json.loads(p.params["geometry"]) for p in esri_server.queries("features")]
    assert len(boxes) == 5  # the extent (timed out, not retried), then its four quarters
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.integration
def test_deadline_passed_ends_the_download(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("us-pa-lancaster"))
    with pytest.raises(DownloadError, match="^Timed out after"):
        download_esri(entry, tmp_path, settings=SETTINGS, deadline=time.time() - 1)
    assert esri_server.queries() == []


@pytest.mark.integration
def test_private_address_is_refused(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("us-pa-lancaster"))
    with pytest.raises(DownloadError, match="^Refusing to fetch from a private address"):
        download_esri(entry, tmp_path, settings=Settings())
    assert esri_server.queries() == []


@pytest.mark.integration
def test_redirect_to_a_private_address_is_refused(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    # Only 127.0.0.1 is allowed: the redirect target 127.0.0.2 is checked before it is followed.
    port = urlsplit(esri_server.base_url).port
    url = esri_server.layer_url(
        "us-pa-lancaster", redirect=f"http://127.0.0.2:{port}/us-pa-lancaster/MapServer/0"
    )
    settings = FastSettings(allow_private_hosts=False, allowed_private_networks=("127.0.0.1/32",))
    with pytest.raises(DownloadError, match="^Refusing to fetch from a private address: 127.0.0.2"):
        download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=settings)
    assert len(esri_server.queries()) == 1


@pytest.mark.integration
def test_redirect_is_followed(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    url = esri_server.layer_url(
        "us-pa-lancaster", redirect=esri_server.layer_url("us-pa-lancaster") + "?f=json"
    )
    settings = FastSettings(allow_private_hosts=False, allowed_private_networks=("127.0.0.1/32",))
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=settings)
    assert [r.kind for r in esri_server.queries()] == ["metadata", "metadata", "count", "features"]
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


# -- endpoint, parameters, headers, reuse ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "service",
    # corpus/sources/us/ca/lake.json writes "Mapserver"
    ["Mapserver", "mapserver", "FeatureServer", "FEATURESERVER"],
)
def test_service_name_in_any_case(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, corpus_sources: Path, service: str
) -> None:
    lake = json.loads((corpus_sources / "us" / "ca" / "lake.json").read_text())
    assert any("/Mapserver/" in e["data"] for entries in lake["layers"].values() for e in entries)
    url = esri_server.layer_url("us-pa-lancaster", service=service) + "/"
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, settings=SETTINGS)
    assert len(read_csv(result.path)) - 1 == len(recorded_features(fixtures, "us-pa-lancaster"))


@pytest.mark.integration
def test_url_query_and_request_headers_go_with_every_request(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # corpus/sources/us/la/lafayette.json carries a query; ours win on conflict, `where` is ANDed.
    url = esri_server.layer_url("us-pa-lancaster", unsupported=("count",))
    url += "?token=s3cret&outFields=FNAME&f=html&where=ADRNUM%3E400"
    entry = entry_for(fixtures, "us/pa/lancaster.json", url)
    entry = dataclasses.replace(entry, data={**entry.data, "request": {"headers": {"X-Api-Key": "k1"}}})
    caplog.set_level(logging.DEBUG, logger="openaddr")
    download_esri(entry, tmp_path, settings=SETTINGS)
    requests = esri_server.queries()
    assert requests
    for request in requests:
        assert request.params["token"] == "s3cret"
        assert request.params["f"] == "json"
        assert request.headers["X-Api-Key"] == "k1"
        assert request.headers["User-Agent"].startswith("openaddresses-extract/1.0")
    (page,) = esri_server.queries("features")
    assert page.params["outFields"] == "*"
    assert page.params["where"] == "(OBJECTID >= 262 AND OBJECTID <= 291) AND (ADRNUM>400)"
    assert esri_server.queries("ids")[0].params["where"] == "ADRNUM>400"
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_existing_cache_file_is_reused(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("us-pa-lancaster"))
    first = download_esri(entry, tmp_path, settings=SETTINGS)
    asked = len(esri_server.queries())
    second = download_esri(entry, tmp_path, settings=SETTINGS)
    assert (second.path, second.fingerprint, second.size) == (first.path, first.fingerprint, first.size)
    assert len(esri_server.queries()) == asked


@pytest.mark.integration
def test_progress_reports_bytes_written(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    url = esri_server.layer_url("us-pa-lancaster", cap=10)
    result = download_esri(entry_for(fixtures, "us/pa/lancaster.json", url), tmp_path, progress=seen.append)
    assert len(seen) == 3
    assert seen == sorted(seen)
    assert seen[-1] == result.size


# -- the conform step reads the cache -------------------------------------------------------------------------


@pytest.mark.integration
def test_conform_reads_the_lancaster_cache(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    source = fixtures / "sources" / "us" / "pa" / "lancaster.json"
    entry = entry_for(fixtures, "us/pa/lancaster.json", esri_server.layer_url("us-pa-lancaster"))
    result = download_esri(entry, tmp_path / "work", settings=SETTINGS)
    out = tmp_path / "state"
    assert (
        cli.main(["conform", str(source), str(result.path), "--layer", "addresses", "--out", str(out)]) == 0
    )
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    features = recorded_features(fixtures, "us-pa-lancaster")
    assert len(rows) == len(features)
    # The original Machine's test_single_pa_lancaster asserted these rows of the same recording.
    assert [rows[i]["UNIT"] for i in (1, 11, 21)] == ["2", "11", ""]
    assert [rows[i]["NUMBER"] for i in (1, 11, 21)] == ["423", "423", "7"]
    assert {rows[i]["STREET"] for i in (1, 11, 21)} == {"W 28TH DIVISION HWY"}
    for row, feature in zip(rows, features, strict=True):
        assert float(row["LON"]) == pytest.approx(feature["geometry"]["x"], abs=1e-7)
        assert float(row["LAT"]) == pytest.approx(feature["geometry"]["y"], abs=1e-7)


@pytest.mark.integration
def test_conform_applies_the_kharkiv_srs_to_the_cache(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path
) -> None:
    # The server ignored outSR=4326 and answered in its own grid, labelled 4326; the source's srs fixes it (§6.5).
    source = fixtures / "sources" / "ua-63-city_of_kharkiv.json"
    entry = entry_for(fixtures, "ua-63-city_of_kharkiv.json", esri_server.layer_url("ua-kharkiv"))
    result = download_esri(entry, tmp_path / "work", settings=SETTINGS)
    out = tmp_path / "state"
    code = cli.main(["conform", str(source), str(result.path), "--layer", "addresses", "--out", str(out)])
    assert code == 0  # a success, with the no_coverage problem: the source has no coverage geometry
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    (feature,) = recorded_features(fixtures, "ua-kharkiv")
    transformer = pyproj.Transformer.from_crs("EPSG:28467", "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(feature["geometry"]["x"], feature["geometry"]["y"])
    assert len(rows) == 1
    assert float(rows[0]["LON"]) == pytest.approx(lon, abs=1.5e-7)
    assert float(rows[0]["LAT"]) == pytest.approx(lat, abs=1.5e-7)
    assert rows[0]["NUMBER"] == feature["attributes"]["PREFIX"]


@pytest.mark.integration
def test_conform_reads_a_polygon_cache(esri_server: ReplayServer, fixtures: Path, tmp_path: Path) -> None:
    source = fixtures / "sources" / "us" / "nm" / "washington.json"
    entry = entry_for(fixtures, "us/nm/washington.json", esri_server.layer_url("us-nm-washington"))
    result = download_esri(entry, tmp_path / "work", settings=SETTINGS)
    out = tmp_path / "state"
    assert (
        cli.main(["conform", str(source), str(result.path), "--layer", "addresses", "--out", str(out)]) == 0
    )
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    features = recorded_features(fixtures, "us-nm-washington")
    assert [r["NUMBER"] for r in rows] == [f["attributes"]["BLDG_NUM"].strip() for f in features]
    for row, feature in zip(rows, features, strict=True):
        x, y = expected_point(feature["geometry"])
        assert float(row["LON"]) == pytest.approx(x, abs=1e-7)
        assert float(row["LAT"]) == pytest.approx(y, abs=1e-7)


# -- the writer, byte for byte --------------------------------------------------------------------------------


def write(
    features: list[dict[str, Any]], names: list[str], lonlat: tuple[str, str] | None = None
) -> tuple[str, Any]:
    buffer = io.StringIO(newline="")
    writer = EsriCsvWriter(buffer, names, lonlat=lonlat)
    writer.write_features(features)
    return buffer.getvalue(), writer


def test_cells_are_formatted_as_the_original_wrote_them() -> None:
    feature = {
        "attributes": {
            "int": 1418601600000,
            "Float": 0.1,
            "big": 1e22,
            "null": None,
            "text": 'a,"b"\nc',
            "spaces": " ",
            "ünï": "é",
        },
        "geometry": {"x": -122.12345674, "y": 37.76543206},
    }
    names = ["FLOAT", "big", "int", "missing", "null", "spaces", "text", "ÜNÏ"]
    text, writer = write([feature], names)
    assert text == (
        "FLOAT,big,int,missing,null,spaces,text,ÜNÏ,OA:x,OA:y,OA:geom\r\n"
        '0.1,1e+22,1418601600000,,, ,"a,""b""\nc",é,-122.1234567,37.7654321,'
        "POINT (-122.12345674 37.76543206)\r\n"
    )
    assert (writer.written, writer.skipped) == (1, 0)


@pytest.mark.parametrize(
    ("geometry", "wkt", "x", "y"),
    [
        # %.16g is not always the shortest form (§3.6.6)
        ({"x": 94.9588628, "y": 0.30000000000000004}, "POINT (94.95886280000001 0.3)", 94.9588628, 0.3),
        ({"points": [[1, 2], [3, 4]]}, "MULTIPOINT (1 2, 3 4)", 2.0, 3.0),
        ({"points": [[1.5, 2]]}, "POINT (1.5 2)", 1.5, 2.0),
        ({"paths": [[[0, 0], [4, 0]]]}, "LINESTRING (0 0, 4 0)", 2.0, 0.0),
        (
            {"paths": [[[0, 0], [2, 0]], [[0, 1], [0, 3]]]},
            "MULTILINESTRING ((0 0, 2 0), (0 1, 0 3))",
            0.5,
            1.0,
        ),
        ({"paths": [[[1, 2, 3], [4, 5, 6]]]}, "LINESTRING Z (1 2 3, 4 5 6)", 2.5, 3.5),
        # an open ring is closed; coordinate order is kept as delivered
        ({"rings": [[[0, 0], [0, 2], [2, 2], [2, 0]]]}, "POLYGON ((0 0, 0 2, 2 2, 2 0, 0 0))", 1.0, 1.0),
        (
            # shells A and B (clockwise), then a hole (counter-clockwise) that lies in A: it belongs to A, not to
            # the last shell seen (esridump's rule)
            {
                "rings": [
                    [[0, 0], [0, 10], [10, 10], [10, 0], [0, 0]],
                    [[20, 20], [20, 30], [30, 30], [30, 20], [20, 20]],
                    [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]],
                ]
            },
            "MULTIPOLYGON (((0 0, 0 10, 10 10, 10 0, 0 0), (2 2, 4 2, 4 4, 2 4, 2 2)), "
            "((20 20, 20 30, 30 30, 30 20, 20 20)))",
            (100 * 5 - 4 * 3 + 100 * 25) / 196,
            (100 * 5 - 4 * 3 + 100 * 25) / 196,
        ),
    ],
)
def test_geometry_is_written_as_wkt_with_its_centroid(
    geometry: dict[str, Any], wkt: str, x: float, y: float
) -> None:
    text, _ = write([{"attributes": {}, "geometry": geometry}], [])
    quoted = f'"{wkt}"' if "," in wkt else wkt
    assert text == f"OA:x,OA:y,OA:geom\r\n{round(x, 7)!r},{round(y, 7)!r},{quoted}\r\n"


@pytest.mark.parametrize(
    "feature",
    [
        {"attributes": {"a": 1}},
        {"attributes": {"a": 1}, "geometry": None},
        {"attributes": {"a": 1}, "geometry": {}},
        {"attributes": {"a": 1}, "geometry": {"x": None, "y": None}},
        {"attributes": {"a": 1}, "geometry": {"x": float("nan"), "y": 41.0}},
        {"attributes": {"a": 1}, "geometry": {"paths": [[[0, 0], [float("nan"), 1]]]}},
        {"attributes": {"a": 1}, "geometry": {"paths": []}},
        {"attributes": {"a": 1}, "geometry": {"points": []}},
        {"attributes": {"a": 1}, "geometry": {"rings": [[[0, 0], [1, 1], [0, 0]]]}},
        {"attributes": {"a": 1}, "geometry": {"paths": [[[0, 0]]]}},
    ],
)
def test_features_without_usable_geometry_are_skipped(feature: dict[str, Any]) -> None:
    text, writer = write([feature], ["a"])
    assert text == "a,OA:x,OA:y,OA:geom\r\n"
    assert (writer.written, writer.skipped) == (0, 1)


@pytest.mark.parametrize(
    ("attributes", "geometry", "row"),
    [
        # no geometry, lon/lat fields holding numbers (corpus/sources/ca/on/peel-region.json): that point
        (
            {"LONGITUDE": -79.7370001, "latitude": "43.725"},
            None,
            "-79.7370001,43.725,POINT (-79.7370001 43.725)",
        ),
        # a geometry wins over the fields
        ({"LONGITUDE": -79.0, "latitude": 43.0}, {"x": 1.0, "y": 2.0}, "1.0,2.0,POINT (1 2)"),
        # not numbers: skipped
        ({"LONGITUDE": "west", "latitude": 43.0}, None, None),
        ({"LONGITUDE": None, "latitude": 43.0}, None, None),
        ({"LONGITUDE": True, "latitude": 43.0}, None, None),
    ],
)
def test_lon_lat_fields_stand_in_for_a_missing_geometry(
    attributes: dict[str, Any], geometry: dict[str, Any] | None, row: str | None
) -> None:
    text, writer = write(
        [{"attributes": attributes, "geometry": geometry}], [], lonlat=("LONGITUDE", "LATITUDE")
    )
    assert text == "OA:x,OA:y,OA:geom\r\n" + (f"{row}\r\n" if row else "")
    assert writer.skipped == (0 if row else 1)


def test_oa_columns_named_by_the_conform_are_not_repeated() -> None:
    text, _ = write(
        [{"attributes": {"A": "a", "OA:x": "server"}, "geometry": {"x": 1.0, "y": 2.0}}], ["A", "OA:x"]
    )
    assert text == "A,OA:x,OA:y,OA:geom\r\na,1.0,2.0,POINT (1 2)\r\n"
