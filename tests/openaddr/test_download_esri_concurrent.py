"""Concurrent ArcGIS paging (processing.md §3.6.4; issue 15, part 3) against the loopback replay server.

The one-at-a-time download (``esri_concurrency=1``) is the reference: pages fetched several at a time must give
the very same cache CSV bytes (the fingerprint and every HASH depend on them), whatever order the pages are
answered in. The server counts the feature pages in flight at once (:attr:`ReplayServer.max_in_flight`), which
the per-host limit bounds; a 429 or 503 with ``Retry-After`` halves that limit. The Redis limiter is tested against
the real Redis at 127.0.0.1:6379, each test under its own key prefix.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from esri_server import (
    esri_server_fixture,  # noqa: F401  (the esri_server fixture)
    generate_layer,
    serve,
)

from openaddr import process_one
from openaddr.download import StageClock
from openaddr.download.esri import MAX_REPLANS, download_esri
from openaddr.download.hostlimit import (
    RECOVERY_SUCCESSES,
    HostLimiterUnavailable,
    LocalHostLimiter,
    RedisHostLimiter,
    slot,
)
from openaddr.errors import DownloadError
from openaddr.settings import Settings
from openaddr.sources import LayerEntry, load_source

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from esri_server import ReplayServer

REDIS_URL = "redis://127.0.0.1:6379/0"


class FastSettings(Settings):
    """Production settings with the loopback server allowed and the §3.6.4 back-off shrunk for tests."""

    allow_private_hosts: bool = True
    esri_timeout: float = 5.0
    esri_retry_delays: tuple[float, ...] = (0.01, 0.01)


def settings(concurrency: int, **changes: Any) -> FastSettings:
    return FastSettings(esri_concurrency=concurrency, **changes)


#: (source file, recording) of the recorded layers; every paging strategy but envelopes occurs among them.
RECORDED = [
    ("us-ca-carson.json", "us-ca-carson"),
    ("us-ny-orange.json", "us-ny-orange"),
    ("ua-63-city_of_kharkiv.json", "ua-kharkiv"),
    ("us/ks/brown_county.json", "us-ks-brown"),
    ("us/nm/washington.json", "us-nm-washington"),
    ("us/pa/lancaster.json", "us-pa-lancaster"),
    ("us/tx/city_of_waco.json", "us-tx-waco"),
]

GENERATED = "gen-points"
FEATURES = 120  # 24 pages of 5
PAGE = 5


def entry_for(fixtures: Path, source: str, url: str) -> LayerEntry:
    entry = load_source(fixtures / "sources" / source).entries(layer="addresses")[0]
    return dataclasses.replace(entry, data={**entry.data, "data": url})


def generated_entry(folder: Path, url: str) -> LayerEntry:
    """A v1 ESRI source of the generated layer (``sources/xx/generated.json``)."""
    source = folder / "sources" / "xx" / "generated.json"
    source.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "coverage": {"country": "xx"},
        "data": url,
        "protocol": "ESRI",
        "conform": {"format": "geojson", "number": "NUMBER", "street": "STREET", "city": "CITY"},
    }
    source.write_text(json.dumps(document), encoding="utf-8")
    return load_source(source).entries(layer="addresses")[0]


@pytest.fixture(name="generated")
def generated_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReplayServer]:
    """A replay server over a generated point layer of :data:`FEATURES` features, :data:`PAGE` a page."""
    monkeypatch.setenv("OPENADDR_ALLOW_PRIVATE_URLS", "1")
    data = tmp_path / "layer"
    generate_layer(data, GENERATED, FEATURES, page_size=PAGE)
    with serve(data) as server:
        yield server


def fetch(entry: LayerEntry, folder: Path, concurrency: int, **kwargs: Any) -> bytes:
    result = download_esri(entry, folder, settings=kwargs.pop("settings", settings(concurrency)), **kwargs)
    return result.path.read_bytes()


# -- the same bytes ---------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("source", "recording"), RECORDED)
def test_recorded_layers_give_the_same_bytes_concurrently(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, source: str, recording: str
) -> None:
    # Pages of 3 so that every layer has several; later pages answered sooner than earlier ones.
    small = {"metadata": {"maxRecordCount": 3}}
    sequential = fetch(
        entry_for(fixtures, source, esri_server.layer_url(recording, **small)), tmp_path / "1", 1
    )
    url = esri_server.layer_url(recording, latencies=(0.02, 0.0, 0.01, 0.0), **small)
    concurrent = fetch(entry_for(fixtures, source, url), tmp_path / "4", 4)
    assert concurrent == sequential
    assert sequential.count(b"\r\n") >= 2  # a header and at least one row


@pytest.mark.integration
def test_a_generated_layer_answered_out_of_order_gives_the_same_bytes(
    generated: ReplayServer, tmp_path: Path
) -> None:
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED))
    sequential = fetch(entry, tmp_path / "1", 1)
    # Each page waits 0 to 30 ms, so that the later pages of a window arrive before the earlier ones.
    url = generated.layer_url(GENERATED, latencies=(0.03, 0.0, 0.02, 0.005, 0.0, 0.01))
    concurrent = fetch(dataclasses.replace(entry, data={**entry.data, "data": url}), tmp_path / "4", 4)
    assert concurrent == sequential
    rows = list(csv.reader(concurrent.decode("utf-8").splitlines()))
    assert rows[0] == ["CITY", "NUMBER", "STREET", "OA:x", "OA:y", "OA:geom"]
    assert len(rows) - 1 == FEATURES
    assert max(a.in_flight for a in generated.arrivals) <= 4
    assert generated.max_in_flight > 1  # the pages were fetched concurrently


@pytest.mark.integration
def test_rows_come_in_the_layers_order(generated: ReplayServer, tmp_path: Path) -> None:
    # Independent of the sequential download: the generated features' own order and coordinates.
    page = json.loads((generated.data / f"{GENERATED}-0.json").read_text(encoding="utf-8"))
    url = generated.layer_url(GENERATED, latencies=(0.02, 0.0, 0.01))
    data = fetch(generated_entry(tmp_path, url), tmp_path / "4", 4)
    rows = list(csv.reader(data.decode("utf-8").splitlines()))[1:]
    expected = [[repr(f["geometry"]["x"]), repr(f["geometry"]["y"])] for f in page["features"]]
    assert [row[3:5] for row in rows] == expected


@pytest.mark.integration
def test_a_capped_server_replans_the_offsets_and_gives_the_same_bytes(
    generated: ReplayServer, tmp_path: Path
) -> None:
    # The server caps pages at 3 although maxRecordCount says 5: the first page comes back short, the offsets
    # planned after it (5, 10, …) are dropped and planned again from what arrived (3, 6, …).
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED, cap=3))
    sequential = fetch(entry, tmp_path / "1", 1)
    sequential_offsets = [a.offset for a in generated.arrivals]
    assert sequential_offsets == list(range(0, FEATURES, 3))
    generated.arrivals.clear()
    url = generated.layer_url(GENERATED, cap=3, latencies=(0.01, 0.0))
    concurrent = fetch(dataclasses.replace(entry, data={**entry.data, "data": url}), tmp_path / "4", 4)
    assert concurrent == sequential
    assert set(sequential_offsets) <= {a.offset for a in generated.arrivals}


@pytest.mark.integration
def test_pages_that_keep_changing_size_end_one_at_a_time(generated: ReplayServer, tmp_path: Path) -> None:
    # Nearly every page another size (3, 4 or 5 features by offset): each plan is dropped, until the rest goes one
    # page at a time, so the requests wasted stay bounded by MAX_REPLANS windows.
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED, ragged=True))
    sequential = fetch(entry, tmp_path / "1", 1)
    asked = len(generated.arrivals)
    generated.arrivals.clear()
    url = generated.layer_url(GENERATED, ragged=True, latencies=(0.01, 0.0))
    concurrent = fetch(dataclasses.replace(entry, data={**entry.data, "data": url}), tmp_path / "4", 4)
    assert concurrent == sequential
    assert len(concurrent.split(b"\r\n")) - 2 == FEATURES
    assert asked < len(generated.arrivals) <= asked + MAX_REPLANS * 2 * 4


@pytest.mark.integration
def test_oid_pages_give_the_same_bytes(generated: ReplayServer, tmp_path: Path) -> None:
    no_paging = {"advancedQueryCapabilities": {"supportsPagination": False}}
    for mode, unsupported in (("statistics", ()), ("oids", ("statistics",))):
        kwargs: dict[str, Any] = {"metadata": no_paging, "unsupported": unsupported}
        entry = generated_entry(tmp_path, generated.layer_url(GENERATED, **kwargs))
        sequential = fetch(entry, tmp_path / f"{mode}-1", 1)
        url = generated.layer_url(GENERATED, latencies=(0.02, 0.0, 0.01), **kwargs)
        concurrent = fetch(
            dataclasses.replace(entry, data={**entry.data, "data": url}), tmp_path / f"{mode}-4", 4
        )
        assert concurrent == sequential, mode
        assert len(concurrent.split(b"\r\n")) - 2 == FEATURES, mode


@pytest.mark.integration
def test_at_most_twice_the_concurrency_pages_are_held(generated: ReplayServer, tmp_path: Path) -> None:
    # The server answers at once and the writer is slow: without back-pressure the pages would all be fetched
    # ahead of the writer. Requests made minus pages written never exceeds the reorder buffer, 2 × 4.
    ahead: list[int] = []

    def progress(size: int) -> None:
        ahead.append(len(generated.arrivals) - len(ahead) - 1)
        time.sleep(0.01)

    entry = generated_entry(tmp_path, generated.layer_url(GENERATED))
    fetch(entry, tmp_path / "4", 4, progress=progress)
    assert len(ahead) == FEATURES // PAGE
    assert max(ahead) <= 2 * 4
    assert max(ahead) > 1  # it did run ahead of the writer


def test_pages_of_plain_points_give_the_bytes_of_the_general_path() -> None:
    # A page of plain points takes the path without GEOS; the same points beside one feature without geometry
    # (skipped) take the general one. Coordinates that format differently under %.16g and repr, integers, a Z.
    import io
    import random

    from openaddr.download.esri import EsriCsvWriter

    rng = random.Random(15)
    tricky = [94.9588628, 0.1 + 0.2, 1e-7, 123456789.123456789, -122.1234567, 1e16, 5, -7, 2.5e-320, 1 / 3]
    points = []
    for i in range(400):
        x = rng.choice([*tricky, rng.uniform(-180, 180)])
        y = rng.choice([*tricky, rng.uniform(-90, 90)])
        geometry = {"x": x, "y": y, **({"z": 1.5} if i % 7 == 0 else {})}
        points.append({"attributes": {"id": i, "Name": f"n{i}", "v": rng.random()}, "geometry": geometry})

    def written(page: list[dict[str, Any]]) -> tuple[str, int]:
        fh = io.StringIO(newline="")
        writer = EsriCsvWriter(fh, ["ID", "name", "v"])
        writer.write_features(page)
        return fh.getvalue(), writer.written

    fast = written(points)
    general = written([*points, {"attributes": {"id": -1}}])
    assert fast == general
    assert fast[1] == len(points)
    assert "POINT (94.95886280000001 " in fast[0] or " 94.95886280000001)" in fast[0]


# -- polite: throttling, failures ----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_page_is_retried_and_lowers_the_concurrency(
    generated: ReplayServer, tmp_path: Path, status: int
) -> None:
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED))
    sequential = fetch(entry, tmp_path / "1", 1)
    generated.arrivals.clear()
    generated.max_in_flight = 0

    limiter = LocalHostLimiter()
    # The first feature page answers status with Retry-After: 1; the ones around it are slow enough that four
    # are in flight when it comes.
    url = generated.layer_url(GENERATED, page_status=status, failures=1, retry_after="1", latency=0.01)
    concurrent = fetch(
        dataclasses.replace(entry, data={**entry.data, "data": url}), tmp_path / "4", 4, limiter=limiter
    )
    assert concurrent == sequential

    arrivals = list(generated.arrivals)
    assert max(a.in_flight for a in arrivals) <= 4
    (throttled,) = [a for a in arrivals if a.status == status]
    retry = next(a for a in arrivals if a.offset == throttled.offset and a is not throttled)
    assert retry.status == 200
    # From the retry on, at most 2 in flight until RECOVERY_SUCCESSES answers in a row have raised it again.
    after = arrivals[arrivals.index(retry) : arrivals.index(retry) + RECOVERY_SUCCESSES // 2]
    assert after
    assert max(a.in_flight for a in after) <= 2
    assert generated.max_in_flight > 2  # it was higher before


def test_the_local_limiter_halves_and_recovers_slowly() -> None:
    limiter = LocalHostLimiter()
    host = "example.com:443"
    for outcome, expected in [("ok", 4), ("throttled", 2), ("throttled", 1), ("throttled", 1), ("failed", 1)]:
        with slot(limiter, host, 4) as held:
            if outcome == "throttled":
                held.throttled()
            elif outcome == "failed":
                held.failed()
        assert limiter.limit(host, 4) == expected
    for answers, expected in [(RECOVERY_SUCCESSES - 1, 1), (1, 2), (RECOVERY_SUCCESSES, 3)]:
        for _ in range(answers):
            with slot(limiter, host, 4):
                pass
        assert limiter.limit(host, 4) == expected


def test_the_local_limiter_waits_for_a_slot_until_the_deadline() -> None:
    limiter = LocalHostLimiter()
    host = "example.com:443"
    tokens = [limiter.acquire(host, 2, None) for _ in range(2)]
    with pytest.raises(
        DownloadError, match="^Timed out after .*waiting for a connection slot to example.com:443"
    ):
        limiter.acquire(host, 2, StageClock(time.time() + 0.05))
    limiter.release(host, tokens[0], "ok", 2)
    limiter.acquire(host, 2, StageClock(time.time() + 5))  # a slot came back


@pytest.mark.integration
def test_a_500_page_fails_the_download_naming_source_layer_and_page(
    generated: ReplayServer, tmp_path: Path
) -> None:
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED, page_status=500))
    with pytest.raises(DownloadError) as caught:
        download_esri(entry, tmp_path / "out", settings=settings(4))
    text = str(caught.value)
    assert text.startswith("Could not retrieve this chunk of objects: HTTP 500 from http://127.0.0.1:")
    assert text.endswith(f"/query ({entry.label}, offset 0)")
    assert entry.label == "generated addresses/primary"  # the source id, the layer and the entry name
    offsets = [a.offset for a in generated.arrivals]
    assert len(offsets) == len(set(offsets))  # never retried
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# -- the Redis limiter ---------------------------------------------------------------------------------------------


@pytest.fixture(name="prefix")
def prefix_fixture() -> Iterator[str]:
    """A key prefix of its own; its keys are deleted afterwards."""
    prefix = f"test-hostlimit-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.integration
def test_two_downloads_of_one_host_share_the_redis_limit(
    generated: ReplayServer, tmp_path: Path, prefix: str
) -> None:
    # Two tasks of the fleet (two limiters, two connections to Redis), three requests each at most: together
    # still at most three in flight.
    url = generated.layer_url(GENERATED, latency=0.01)
    entry = generated_entry(tmp_path, url)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def task(number: int) -> None:
        limiter = RedisHostLimiter(REDIS_URL, lease_seconds=30, prefix=prefix)
        try:
            results[number] = fetch(entry, tmp_path / str(number), 3, limiter=limiter)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            limiter.close()

    threads = [threading.Thread(target=task, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert results[1] == results[2]
    assert len(results[1].split(b"\r\n")) - 2 == FEATURES
    assert len(generated.arrivals) == 2 * FEATURES // PAGE
    assert generated.max_in_flight <= 3
    assert generated.max_in_flight > 1


HOLDER = """
import sys, time
from openaddr.download.hostlimit import RedisHostLimiter
limiter = RedisHostLimiter(sys.argv[1], lease_seconds=float(sys.argv[3]), prefix=sys.argv[2])
for _ in range(2):
    limiter.acquire("example.com:443", 3, None)
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.integration
def test_the_leases_of_a_killed_holder_come_back(prefix: str) -> None:
    host = "example.com:443"
    limiter = RedisHostLimiter(REDIS_URL, lease_seconds=30, prefix=prefix)
    mine = limiter.acquire(host, 3, None)  # a lease of 30 s, held throughout
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, REDIS_URL, prefix, "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        # All three slots are held: a fourth request waits until its deadline.
        with pytest.raises(DownloadError, match="waiting for a connection slot to example.com:443"):
            limiter.acquire(host, 3, StageClock(time.time() + 0.2))
        holder.kill()
        holder.wait(10)
        # Killed without giving them back: its two leases expire (mine does not) and their slots come back.
        tokens = [limiter.acquire(host, 3, StageClock(time.time() + 10)) for _ in range(2)]
        assert len({mine, *tokens}) == 3
        with pytest.raises(DownloadError, match="waiting for a connection slot to example.com:443"):
            limiter.acquire(host, 3, StageClock(time.time() + 0.2))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        limiter.close()


@pytest.mark.integration
def test_the_redis_limit_is_halved_for_the_whole_fleet(prefix: str) -> None:
    first = RedisHostLimiter(REDIS_URL, lease_seconds=30, prefix=prefix)
    second = RedisHostLimiter(REDIS_URL, lease_seconds=30, prefix=prefix)
    host = "example.com:443"
    try:
        with slot(first, host, 4) as held:
            held.throttled()
        assert second.limit(host, 4) == 2
        taken = [second.acquire(host, 4, None) for _ in range(2)]
        with pytest.raises(DownloadError, match="waiting for a connection slot"):
            first.acquire(host, 4, StageClock(time.time() + 0.2))
        for token in taken:
            second.release(host, token, "ok", 4)
        for _ in range(RECOVERY_SUCCESSES - 2):
            with slot(first, host, 4):
                pass
        assert first.limit(host, 4) == 3
    finally:
        first.close()
        second.close()


@pytest.mark.integration
def test_an_unreachable_redis_fails_clearly(
    generated: ReplayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = generated_entry(tmp_path, generated.layer_url(GENERATED))
    unreachable = settings(4, host_limiter="redis", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(
        HostLimiterUnavailable,
        match=r"^OPENADDR_HOST_LIMITER=redis, but Redis at redis://127\.0\.0\.1:1/0 does not answer",
    ):
        download_esri(entry, tmp_path / "out", settings=unreachable)
    with pytest.raises(HostLimiterUnavailable, match="^OPENADDR_HOST_LIMITER=redis needs OPENADDR_REDIS_URL"):
        download_esri(entry, tmp_path / "out", settings=settings(4, host_limiter="redis"))
    assert generated.arrivals == []
    # Processing the entry stops with it instead of recording a source problem: process-one exits 2 with that
    # line, leaving no state.
    with pytest.raises(HostLimiterUnavailable):
        process_one.process_entry(entry, tmp_path / "state", settings=unreachable)
    out = tmp_path / "process-one"
    code = process_one.process_one_command(
        str(entry.source.path), str(out), layer=None, name=None, settings=unreachable
    )
    assert code == 2
    assert "openaddr process-one: OPENADDR_HOST_LIMITER=redis, but Redis at" in capsys.readouterr().err
    assert not list(out.rglob("index.json"))
    assert generated.arrivals == []


def test_the_settings_of_the_limit() -> None:
    assert (Settings().esri_concurrency, Settings().host_limiter, Settings().redis_url) == (4, "local", None)
    read = Settings.from_env(
        {"OPENADDR_ESRI_CONCURRENCY": "8", "OPENADDR_HOST_LIMITER": "Redis", "OPENADDR_REDIS_URL": REDIS_URL}
    )
    assert (read.esri_concurrency, read.host_limiter, read.redis_url) == (8, "redis", REDIS_URL)
    for variable, value in [("OPENADDR_ESRI_CONCURRENCY", "0"), ("OPENADDR_HOST_LIMITER", "memcached")]:
        with pytest.raises(ValueError, match=f"^{variable}="):
            Settings.from_env({variable: value})
