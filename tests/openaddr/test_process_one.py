"""End to end: ``openaddr process-one`` on every fixture source, its URL pointed at loopback servers.

Every ``*.json`` under ``fixtures/machine/sources`` is run through the command: the sources whose data is in
``fixtures/machine/data`` (:data:`tests.fixture_cases.CASES`) over HTTP or FTP, the ESRI sources through the replay
of their recorded pages, the rest against a 404. Hostile servers and archives must each end as a recorded, named
failure within small limits set through ``OPENADDR_*`` variables (processing.md §3, §4.2, §10.2, §13).

Expected values are read from the inputs directly (MD5 of the data file, features with a usable geometry counted in
the recorded page, records read with fiona), or come from ``openaddr conform`` on the same bytes with the same
fingerprint — the two entry points must agree byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fiona
import pytest
from esri_server import esri_server_fixture  # noqa: F401  (the esri_server fixture)

from openaddr.cli import main
from openaddr.process_one import process_one as run_process_one
from tests.fixture_cases import CASES
from tests.servers import fast_settings

if TYPE_CHECKING:
    from esri_server import ReplayServer

    from tests.servers import LoopbackFTPServer, LoopbackHTTPServer

SKIPPED = "Source says to skip"
NO_COVERAGE = "Missing or incomplete coverage"
DOWNLOAD_FAILED = "Could not download source data"
CONFORM_FAILED = "Could not conform source data"
TOKEN_LINE = "Could not download ESRI source data: Could not retrieve layer metadata: Token Required"
#: How Python prints a timedelta (the state's ``cache time``, §9.7).
TIMEDELTA = re.compile(r"\d+:\d\d:\d\d(\.\d{6})?")
#: Files a failed entry may leave in its state directory: the state and the log (§1.2, §9.7).
STATE_FILES = ["index.json", "index.txt", "output.txt"]

#: Fixture sources of CASES whose data is fetched over FTP (their ``protocol`` is ``ftp``).
FTP_SOURCES = frozenset({"iceland.json", "us-ut.json", "us/or/portland.json"})

#: ESRI fixture sources: source, recording, expected problem (read off ``coverage``), compared with ``conform``.
ESRI_CASES = [
    ("us-ca-carson.json", "us-ca-carson", NO_COVERAGE, False),
    ("us-ca-carson-cached.json", "us-ca-carson", NO_COVERAGE, False),  # https cache URL: not kept (§3.5)
    ("us-ca-carson-old-cached.json", "us-ca-carson", NO_COVERAGE, False),
    ("us-ny-orange.json", "us-ny-orange", None, False),
    ("ua-63-city_of_kharkiv.json", "ua-kharkiv", NO_COVERAGE, True),
    ("us/ks/brown_county.json", "us-ks-brown", None, False),
    ("us/nm/washington.json", "us-nm-washington", None, True),
    ("us/pa/lancaster.json", "us-pa-lancaster", None, True),
    ("us/tx/city_of_waco.json", "us-tx-waco", None, False),
]
RUNNELS = "us/tx/runnels.json"

#: Fixture sources without data: source, whether the download is attempted (it gets a 404), problem, tests passed.
NO_DATA = [
    ("cz-countrywide-bad-tests.json", False, "An acceptance test failed", False),
    ("cz-countrywide-good-tests.json", True, DOWNLOAD_FAILED, True),
    ("cz-countrywide-implied-tests.json", True, DOWNLOAD_FAILED, True),
    ("cz-countrywide-disabled-tests.json", True, DOWNLOAD_FAILED, None),
    # "format": "http" where "protocol" belongs: no protocol, so no download (§1.2 step 4)
    ("cz-countrywide-no-tests.json", False, "Unknown source conform protocol", None),
    ("us-ca-berkeley-404.json", True, DOWNLOAD_FAILED, None),
    ("us-or-curry.json", True, DOWNLOAD_FAILED, True),
]


# -- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def scratch(allow_private_urls: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Small limits for every run, and the work directories under ``tmp_path/scratch`` so that tests see them."""
    for name, value in {
        "OPENADDR_CONNECT_TIMEOUT": "2",
        "OPENADDR_READ_TIMEOUT": "0.5",
        "OPENADDR_FTP_TIMEOUT": "2",
        "OPENADDR_RETRY_DELAYS": "0.01,0.01",
        "OPENADDR_MAX_RETRY_AFTER": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPENADDR_ALLOWED_PRIVATE_NETWORKS", raising=False)
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    # The machine's scratch folder (the ArcGIS host limiter's slot files) is not the run's temporary folder.
    monkeypatch.setenv("OPENADDR_SCRATCH", str(tmp_path / "machine-scratch"))
    return folder


@pytest.fixture(scope="module")
def ftp_data(ftp_server: LoopbackFTPServer, fixtures: Path) -> LoopbackFTPServer:
    """The session's FTP server, its anonymous folder also holding the data files of the FTP sources of CASES.

    Not a second :class:`LoopbackFTPServer`: every pyftpdlib server of a process polls the one global ``IOLoop``,
    so two servers poll it from two threads and connections break at random (a socket closed under the other).
    """
    for source_name, data_name, _ in CASES:
        target = ftp_server.anonymous_dir / data_name
        if source_name in FTP_SOURCES and not target.exists():
            shutil.copyfile(fixtures / "data" / data_name, target)
    return ftp_server


def first_entry(document: dict[str, Any]) -> dict[str, Any]:
    """The first address entry of a source document: the document itself for a v1 file."""
    return document["layers"]["addresses"][0] if "layers" in document else document


def point_source(fixtures: Path, source_name: str, url: str, into: Path, **changes: Any) -> Path:
    """A copy of a fixture source below ``into/sources/`` with its ``data`` (and ``changes``) replaced."""
    document = json.loads((fixtures / "sources" / source_name).read_text(encoding="utf-8"))
    first_entry(document).update(data=url, **changes)
    path = into / "sources" / source_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


def read_state(state_dir: Path) -> dict[str, Any]:
    keys, values = json.loads((state_dir / "index.json").read_text(encoding="utf-8"))
    return dict(zip(keys, values, strict=True))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def warnings_in(log_text: str) -> list[str]:
    """The messages of the WARNING lines of an ``output.txt``."""
    return [line.split(" WARNING: ", 1)[1] for line in log_text.splitlines() if " WARNING: " in line]


def directories(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir())


def process_one(source: Path, out: Path, *options: str) -> int:
    return main(["process-one", str(source), "--out", str(out), *options])


def numbers(value: Any) -> list[Any]:
    return [n for item in value for n in numbers(item)] if isinstance(value, list) else [value]


def usable(geometry: Any) -> bool:
    """An ESRI geometry with at least one coordinate and only finite numbers as coordinates (§3.6.5)."""
    if not isinstance(geometry, dict) or not geometry:
        return False
    if "x" in geometry:
        coordinates = [geometry.get("x"), geometry.get("y")]
    else:
        coordinates = [n for key in ("points", "paths", "rings") for n in numbers(geometry.get(key) or [])]
    return bool(coordinates) and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coordinates
    )


def assert_failed_cleanly(
    code: int, state_dir: Path, scratch: Path, problem: str, *, cache: bool, sample: bool = False
) -> str:
    """A recorded failure: exit 1, the problem in the state, only the state and log (and cache, sample) left.

    :return: the log
    """
    state = read_state(state_dir)
    assert (code, state["source problem"]) == (1, problem)
    kept = STATE_FILES + (["cache.zip"] if cache else []) + (["sample.json"] if sample else [])
    assert sorted(p.name for p in state_dir.iterdir()) == sorted(kept)
    assert (state["cache"] == "cache.zip") is cache
    assert state["processed"] is None
    assert list(scratch.iterdir()) == []  # the work directory is removed on every exit path (§1.3)
    return (state_dir / "output.txt").read_text(encoding="utf-8")


# -- every fixture source with data ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("source_name", "data_name", "problem"), CASES, ids=[c[0] for c in CASES])
def test_fixture_source_gives_the_rows_of_conform(
    source_name: str,
    data_name: str,
    problem: str | None,
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    http_server: LoopbackHTTPServer,
    ftp_data: LoopbackFTPServer,
) -> None:
    data = (fixtures / "data" / data_name).read_bytes()
    route = f"/data/{data_name}"
    url = ftp_data.url(f"/{data_name}") if source_name in FTP_SOURCES else http_server.url(route)
    source = point_source(fixtures, source_name, url, tmp_path)
    entry = first_entry(json.loads(source.read_text(encoding="utf-8")))
    name = entry.get("name", "primary")
    hits = http_server.hits[route]

    out = tmp_path / "out"
    code = process_one(source, out)
    state_dir = out / "addresses" / name
    assert directories(out) == ["addresses", f"addresses/{name}"]
    state = read_state(state_dir)
    assert state["source"] == Path(source_name).name
    assert list(scratch.iterdir()) == []

    if problem == SKIPPED:  # skipped before any test or download (§1.2 step 2)
        assert (code, state["source problem"], state["skipped"]) == (1, SKIPPED, True)
        assert http_server.hits[route] == hits
        assert (state["cache"], state["fingerprint"], state["cache time"]) == (None, None, None)
        assert sorted(p.name for p in state_dir.iterdir()) == STATE_FILES
        return

    # The raw download is the cache; its MD5 is the fingerprint; a legacy http cache URL with the same
    # fingerprint would be kept instead (§3.5) — none of these sources carries a fingerprint.
    fingerprint = md5(data)
    assert state["fingerprint"] == fingerprint
    legacy = entry.get("cache") if entry.get("fingerprint") == fingerprint else None
    if isinstance(legacy, str) and legacy.startswith("http://"):
        assert state["cache"] == legacy
        assert not (state_dir / "cache.zip").exists()
    else:
        assert state["cache"] == "cache.zip"
        assert (state_dir / "cache.zip").read_bytes() == data
    assert TIMEDELTA.fullmatch(state["cache time"])
    assert state["skipped"] is False

    # openaddr conform on a copy of the same bytes, with the same fingerprint
    copy = tmp_path / "input" / data_name
    copy.parent.mkdir()
    copy.write_bytes(data)
    conformed_dir = tmp_path / "conformed"
    conform_code = main(
        [
            "conform",
            str(source),
            str(copy),
            "--layer",
            "addresses",
            "--name",
            name,
            "--fingerprint",
            fingerprint,
            "--out",
            str(conformed_dir),
        ]
    )
    conformed = read_state(conformed_dir)
    log = (state_dir / "output.txt").read_text(encoding="utf-8")
    assert (code, state["source problem"]) == (conform_code, conformed["source problem"]), log
    assert state["address count"] == conformed["address count"]
    assert state["geometry type"] == conformed["geometry type"]
    if problem:
        assert (code, state["source problem"]) == (1, problem)
        assert not (state_dir / "out.csv").exists()
        assert not (state_dir / "out.geojson").exists()
        assert [p.name for p in state_dir.glob("*.zip")] == ["cache.zip"]
        return
    assert code == 0, log
    assert state["source problem"] in (None, NO_COVERAGE)
    assert state["address count"] > 0
    assert state["processed"] == "out.csv"
    for output in ("out.csv", "out.geojson", "sample.json"):
        assert (state_dir / output).read_bytes() == (conformed_dir / output).read_bytes(), output
    assert len([p for p in state_dir.glob("*.zip") if p.name != "cache.zip"]) == 1


@pytest.mark.integration
@pytest.mark.parametrize(("cache_url", "kept"), [("http://fake-cache/lake-man.gdb.zip", True), (None, False)])
def test_legacy_cache_url_is_kept_when_its_fingerprint_matches(
    cache_url: str | None,
    kept: bool,
    fixtures: Path,
    tmp_path: Path,
    http_server: LoopbackHTTPServer,
) -> None:
    # lake-man-gdb.json has an http cache URL but no fingerprint; give it the data file's MD5 (§3.5).
    data = (fixtures / "data" / "lake-man.gdb.zip").read_bytes()
    changes: dict[str, Any] = {"fingerprint": md5(data)}
    if cache_url is None:
        changes["cache"] = "https://fake-cache/lake-man.gdb.zip"  # https: never kept
    source = point_source(
        fixtures, "lake-man-gdb.json", http_server.url("/data/lake-man.gdb.zip"), tmp_path, **changes
    )
    assert process_one(source, tmp_path / "out") == 0
    state_dir = tmp_path / "out" / "addresses" / "primary"
    state = read_state(state_dir)
    assert state["fingerprint"] == md5(data)
    assert state["cache"] == (cache_url if kept else "cache.zip")
    assert (state_dir / "cache.zip").exists() is not kept
    assert state["address count"] > 0


# -- ESRI sources through the replay server -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("source_name", "recording", "problem", "compare"), ESRI_CASES)
def test_esri_source_gives_its_recorded_features(
    source_name: str,
    recording: str,
    problem: str | None,
    compare: bool,
    esri_server: ReplayServer,
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
) -> None:
    source = point_source(fixtures, source_name, esri_server.layer_url(recording), tmp_path)
    out = tmp_path / "out"
    code = process_one(source, out)
    state_dir = out / "addresses" / "primary"
    state = read_state(state_dir)
    log = (state_dir / "output.txt").read_text(encoding="utf-8")
    assert (code, state["source problem"]) == (0, problem), log
    assert list(scratch.iterdir()) == []

    page = json.loads((fixtures / "data" / f"{recording}-0.json").read_text(encoding="utf-8"))
    expected = sum(usable(feature.get("geometry")) for feature in page["features"])
    with (state_dir / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == state["address count"] == expected > 0
    skipped = len(page["features"]) - expected
    if skipped:
        assert any(f"Skipped {skipped} of {len(page['features'])} features" in w for w in warnings_in(log))

    # The cache is the client's CSV (zipped, §3.5): one row per kept feature, and its MD5 is the fingerprint.
    assert state["cache"] == "cache.zip"
    with zipfile.ZipFile(state_dir / "cache.zip") as archive:
        (member,) = archive.namelist()
        raw = archive.read(member)
    assert state["fingerprint"] == md5(raw)
    assert len(list(csv.reader(io.StringIO(raw.decode("utf-8"))))) == expected + 1
    entry = first_entry(json.loads(source.read_text(encoding="utf-8")))
    assert state["version"] == entry.get("version")
    assert TIMEDELTA.fullmatch(state["cache time"])

    if compare:
        cache_csv = tmp_path / "input" / member
        cache_csv.parent.mkdir()
        cache_csv.write_bytes(raw)
        conformed = tmp_path / "conformed"
        argv = ["conform", str(source), str(cache_csv), "--layer", "addresses"]
        assert main([*argv, "--fingerprint", state["fingerprint"], "--out", str(conformed)]) == 0
        for output in ("out.csv", "out.geojson"):
            assert (state_dir / output).read_bytes() == (conformed / output).read_bytes(), output


@pytest.mark.integration
def test_esri_token_required_is_its_own_problem(
    esri_server: ReplayServer, fixtures: Path, tmp_path: Path, scratch: Path
) -> None:
    source = point_source(fixtures, RUNNELS, esri_server.layer_url("us-tx-runnels"), tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, "Missing required ESRI token", cache=False
    )
    assert [w for w in warnings_in(log) if not w.startswith("The private-address guard is off")] == [
        TOKEN_LINE
    ]
    assert DOWNLOAD_FAILED not in log
    assert esri_server.queries("features") == []


# -- fixture sources without data -----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("source_name", "downloads", "problem", "tests_passed"), NO_DATA)
def test_source_without_data(
    source_name: str,
    downloads: bool,
    problem: str,
    tests_passed: bool | None,
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    http_server: LoopbackHTTPServer,
) -> None:
    route = f"/process-one/{tmp_path.name}/{Path(source_name).stem}.zip"
    url = http_server.add(route, b"no such file\n", status=404, content_type="text/plain")
    source = point_source(fixtures, source_name, url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, problem, cache=False
    )
    assert read_state(state_dir)["tests passed"] is tests_passed
    assert http_server.hits[route] == (1 if downloads else 0)  # a 404 is final: not retried (§3.2)
    if downloads:
        assert f"{DOWNLOAD_FAILED}: 404 response from {url}" in warnings_in(log)
    else:
        assert DOWNLOAD_FAILED not in log


def test_every_fixture_source_is_exercised(fixtures: Path) -> None:
    covered = (
        [case[0] for case in CASES]
        + [case[0] for case in ESRI_CASES]
        + [RUNNELS]
        + [case[0] for case in NO_DATA]
    )
    assert len(covered) == len(set(covered))
    sources = fixtures / "sources"
    assert sorted(p.relative_to(sources).as_posix() for p in sources.rglob("*.json")) == sorted(covered)


# -- hostile servers and archives -----------------------------------------------------------------------------


def zeros_zip(megabytes: int, name: str = "addresses.csv") -> bytes:
    """A deflated zip holding one member of ``megabytes`` MiB of zeros."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w") as member:
            block = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(block)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zip_bombs() -> dict[str, bytes]:
    """``flat``: about 50 KB holding 50 MiB of zeros. ``nested``: ten inner zips of 4 MiB each, every one under
    the 5,000,000-byte cap on its own, 40 MiB together (the cap counts every nesting level)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(10):
            archive.writestr(f"part{n}.zip", zeros_zip(4, f"part{n}.csv"))
    return {"flat": zeros_zip(50), "nested": buffer.getvalue()}


def zip_slip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("addresses.csv", "x,y,n,s\n1,2,3,Main St\n")
        archive.writestr(zipfile.ZipInfo("../../evil.csv"), "x,y,n,s\n1,2,3,Evil St\n")
    return buffer.getvalue()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["flat", "nested"])
def test_zip_bomb_is_a_conform_failure(
    kind: str,
    zip_bombs: dict[str, bytes],
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: LoopbackHTTPServer,
) -> None:
    monkeypatch.setenv("OPENADDR_MAX_DECOMPRESSED_BYTES", "5000000")
    zip_bomb = zip_bombs[kind]
    url = http_server.add(f"/process-one/{tmp_path.name}/bomb.zip", zip_bomb, content_type="application/zip")
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, CONFORM_FAILED, cache=True
    )
    assert read_state(state_dir)["fingerprint"] == md5(zip_bomb)
    assert any(
        w.startswith("Error doing conform; skipping") and "Archive too large" in w for w in warnings_in(log)
    )


@pytest.mark.integration
def test_zip_slip_is_a_conform_failure_naming_the_member(
    fixtures: Path, tmp_path: Path, scratch: Path, http_server: LoopbackHTTPServer
) -> None:
    url = http_server.add(
        f"/process-one/{tmp_path.name}/slip.zip", zip_slip(), content_type="application/zip"
    )
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, CONFORM_FAILED, cache=True
    )
    assert any(
        w.startswith("Error doing conform; skipping") and "'../../evil.csv'" in w for w in warnings_in(log)
    )
    # ../../ from <scratch>/process_one-*/unzipped is the scratch folder itself
    assert list(tmp_path.rglob("evil.csv")) == []


@pytest.mark.integration
@pytest.mark.parametrize("redirected", [False, True], ids=["direct", "redirect"])
def test_metadata_address_is_refused(
    redirected: bool,
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: LoopbackHTTPServer,
) -> None:
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_URLS")
    monkeypatch.delenv("OPENADDR_ALLOW_PRIVATE_HOSTS", raising=False)
    url = "http://169.254.169.254/latest/meta-data/"
    if redirected:  # the loopback server is let through; where it redirects to is checked again (§3.1)
        monkeypatch.setenv("OPENADDR_ALLOWED_PRIVATE_NETWORKS", "127.0.0.0/8")
        url = http_server.add_redirect(f"/process-one/{tmp_path.name}/metadata", url)
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, DOWNLOAD_FAILED, cache=False
    )
    assert any(
        w.startswith(f"{DOWNLOAD_FAILED}: ") and "Refusing to fetch from a private address" in w
        for w in warnings_in(log)
    )


@pytest.mark.integration
def test_hanging_server_is_a_download_failure_naming_the_timeout(
    fixtures: Path, tmp_path: Path, scratch: Path, http_server: LoopbackHTTPServer
) -> None:
    route = f"/process-one/{tmp_path.name}/hanging.zip"
    url = http_server.add_hanging(route)
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, DOWNLOAD_FAILED, cache=False
    )
    assert any(w.startswith(f"{DOWNLOAD_FAILED}: Timed out after") for w in warnings_in(log))
    assert http_server.hits[route] == 3  # a timeout is retried twice (§3.2)


@pytest.mark.integration
def test_truncated_download_is_incomplete(
    fixtures: Path, tmp_path: Path, scratch: Path, http_server: LoopbackHTTPServer
) -> None:
    data = (fixtures / "data" / "us-wy-park.zip").read_bytes()
    route = f"/process-one/{tmp_path.name}/truncated.zip"
    url = http_server.add_truncated(route, data[: len(data) // 2], claimed=len(data))
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, DOWNLOAD_FAILED, cache=False
    )
    assert any(w.startswith(f"{DOWNLOAD_FAILED}: Incomplete download") for w in warnings_in(log))
    assert http_server.hits[route] == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    ("changes", "variables"),
    [
        # the entry's timeout, in hours: 0.36 s (the schema wants whole hours; v1 files are only advised)
        ({"timeout": 0.0001}, {}),
        ({}, {"OPENADDR_DOWNLOAD_TIME_LIMIT": "0.3"}),
    ],
    ids=["source-timeout", "download-time-limit"],
)
def test_time_limit_ends_a_slow_download(
    changes: dict[str, Any],
    variables: dict[str, str],
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: LoopbackHTTPServer,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    data = (fixtures / "data" / "us-wy-park.zip").read_bytes()
    # 10 bytes every 50 ms: no read timeout ever fires, but the whole body would take minutes.
    url = http_server.add_slow(f"/process-one/{tmp_path.name}/slow.zip", data, delay=0.05, chunk=10)
    source = point_source(fixtures, "us-wy-park.json", url, tmp_path, **changes)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, DOWNLOAD_FAILED, cache=False
    )
    assert any(w.startswith(f"{DOWNLOAD_FAILED}: Timed out after") for w in warnings_in(log))


@pytest.mark.integration
def test_conform_time_limit_ends_the_conform_stage(
    fixtures: Path,
    tmp_path: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: LoopbackHTTPServer,
) -> None:
    # OPENADDR_CONFORM_TIME_LIMIT bounds the conform stage as OPENADDR_DOWNLOAD_TIME_LIMIT bounds the download.
    monkeypatch.setenv("OPENADDR_CONFORM_TIME_LIMIT", "0.000001")
    source = point_source(fixtures, "us-wy-park.json", http_server.url("/data/us-wy-park.zip"), tmp_path)
    state_dir = tmp_path / "out" / "addresses" / "primary"
    log = assert_failed_cleanly(
        process_one(source, tmp_path / "out"), state_dir, scratch, CONFORM_FAILED, cache=True, sample=True
    )
    assert any(
        w.startswith("Error doing conform; skipping") and "Timed out after" in w for w in warnings_in(log)
    )


@pytest.mark.integration
def test_settings_given_to_process_one_also_cap_decompression(
    fixtures: Path, tmp_path: Path, scratch: Path, http_server: LoopbackHTTPServer
) -> None:
    # us-wy-park.zip declares 52,600 bytes (unzip -l); the environment's cap (the default) lets it through.
    settings = fast_settings(max_decompressed_bytes=10_000)
    source = point_source(fixtures, "us-wy-park.json", http_server.url("/data/us-wy-park.zip"), tmp_path)
    (result,) = run_process_one(source, tmp_path / "out", settings=settings, scratch=scratch)
    assert result.state["source problem"] == CONFORM_FAILED
    log = (result.directory / "output.txt").read_text(encoding="utf-8")
    assert any("Archive too large" in w for w in warnings_in(log))
    assert list(scratch.iterdir()) == []


# -- the command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [None, b"{not json", b"[1, 2]"], ids=["missing", "not-json", "not-an-object"]
)
def test_unreadable_source_exits_2(content: bytes | None, tmp_path: Path) -> None:
    source = tmp_path / "source.json"
    if content is not None:
        source.write_bytes(content)
    assert process_one(source, tmp_path / "out") == 2
    assert not (tmp_path / "out").exists()


def test_bad_usage_exits_2(fixtures: Path, tmp_path: Path) -> None:
    source = fixtures / "sources" / "us-wy-park.json"
    assert main(["process-one", str(source)]) == 2  # no --out
    assert process_one(source, tmp_path / "out", "--layer", "roads") == 2
    assert process_one(source, tmp_path / "out", "--layer", "parcels") == 2  # no such entry
    assert process_one(source, tmp_path / "out", "--name", "nope") == 2
    assert not (tmp_path / "out").exists()


@pytest.fixture
def perrysburg(
    fixtures: Path, corpus_sources: Path, tmp_path: Path, http_server: LoopbackHTTPServer
) -> tuple[Path, str]:
    """``us/oh/city_of_perrysburg.json``'s shape: two address entries named ``city``, a ``city`` parcels and
    buildings entry; the address entries point at ``us-wy-park.zip`` with us-wy-park.json's conform, the others at
    a 404. Returns the source and the 404 route."""
    document = json.loads((corpus_sources / "us/oh/city_of_perrysburg.json").read_text(encoding="utf-8"))
    park = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    route = f"/process-one/{tmp_path.name}/gone.zip"
    missing = http_server.add(route, b"gone\n", status=404)
    layers = document["layers"]
    assert [e["name"] for e in layers["addresses"]] == ["city", "city"]
    for entry in layers["addresses"]:
        entry.update(protocol="http", data=http_server.url("/data/us-wy-park.zip"), conform=park["conform"])
    for entry in layers["parcels"] + layers["buildings"]:
        entry.update(protocol="http", data=missing)
    path = tmp_path / "sources" / "us" / "oh" / "city_of_perrysburg.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(document, indent=4), encoding="utf-8")
    return path, route


@pytest.mark.integration
def test_entries_of_the_same_name_get_numbered_directories(
    perrysburg: tuple[Path, str],
    fixtures: Path,
    tmp_path: Path,
    http_server: LoopbackHTTPServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, missing = perrysburg
    out = tmp_path / "out"
    assert process_one(source, out, "--layer", "addresses") == 0
    assert directories(out) == ["addresses", "addresses/city", "addresses/city-2"]
    assert http_server.hits[missing] == 0

    shapefile = next(iter(fiona.listlayers(f"zip://{fixtures / 'data' / 'us-wy-park.zip'}")))
    with fiona.open(f"zip://{fixtures / 'data' / 'us-wy-park.zip'}", layer=shapefile) as records:
        count = len(records)
    first, second = out / "addresses" / "city", out / "addresses" / "city-2"
    assert read_state(first)["address count"] == read_state(second)["address count"] == count
    # Same bytes, same fingerprint, same rows (§8.2).
    assert (first / "out.csv").read_bytes() == (second / "out.csv").read_bytes()
    # The published zip of a later address entry is named <source>-<name> (§9.2).
    with zipfile.ZipFile(first / "city_of_perrysburg.zip") as archive:
        assert archive.namelist()[-1] == "us/oh/city_of_perrysburg.csv"
    with zipfile.ZipFile(second / "city_of_perrysburg-city-2.zip") as archive:
        assert archive.namelist()[-1] == "us/oh/city_of_perrysburg-city-2.csv"
    assert capsys.readouterr().out.splitlines() == [
        f"{first}: success, {count} rows",
        f"{second}: success, {count} rows",
    ]


@pytest.mark.integration
def test_layer_and_name_select_one_state_directory(
    perrysburg: tuple[Path, str], tmp_path: Path, http_server: LoopbackHTTPServer
) -> None:
    source, missing = perrysburg
    out = tmp_path / "only-city-2"
    assert process_one(source, out, "--layer", "addresses", "--name", "city-2") == 0
    assert directories(out) == ["addresses", "addresses/city-2"]

    # --name alone selects that name in every layer type; a failing entry makes the exit status 1.
    out = tmp_path / "every-city"
    assert process_one(source, out, "--name", "city") == 1
    assert directories(out) == [
        "addresses",
        "addresses/city",
        "buildings",
        "buildings/city",
        "parcels",
        "parcels/city",
    ]
    assert read_state(out / "addresses" / "city")["source problem"] is None
    for layer in ("parcels", "buildings"):
        assert read_state(out / layer / "city")["source problem"] == DOWNLOAD_FAILED
    assert http_server.hits[missing] == 2


# -- nothing outside --out (issue 10: one trust boundary) -----------------------------------------------------


def _files_outside(root: Path, out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_relative_to(out)
    }


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder beside the run's --out holding what a failing entry deletes: out.csv, stats.json and zips."""
    folder = tmp_path / "x"
    folder.mkdir()
    for name in ("out.csv", "stats.json", "us-wy-park.zip", "cache.zip", "index.json"):
        (folder / name).write_bytes(f"{name} of another run\n".encode())
    return folder


@pytest.mark.parametrize("v1", [False, True], ids=["schema-2", "layerless-v1"])
@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_unsafe_name_writes_and_deletes_nothing_outside_out(
    fixtures: Path, tmp_path: Path, victim: Path, kind: str, v1: bool
) -> None:
    # "../../../x" made the state directory <out>/addresses/../../../x, and "/abs/dir" made it /abs/dir: the failing
    # entry then deleted that folder's out.csv, stats.json and zips. Unsafe names end the entry in every mode.
    out = tmp_path / "run" / "out"
    name = "../../../x" if kind == "relative" else str(victim)  # both name the victim folder
    entry = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    entry.update(name=name, data="http://127.0.0.1:9/nothing.zip")
    document = (
        entry if v1 else {"schema": 2, "coverage": entry.pop("coverage"), "layers": {"addresses": [entry]}}
    )
    source = tmp_path / "source.json"
    source.write_text(json.dumps(document), encoding="utf-8")
    before = _files_outside(tmp_path, out)

    result = subprocess.run(
        [sys.executable, "-m", "openaddr", "process-one", str(source), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert _files_outside(tmp_path, out) == before
    assert directories(out) == ["addresses", "addresses/unnamed-1"]
    state = read_state(out / "addresses" / "unnamed-1")
    assert state["source problem"] == "Source does not match the schema"
    log = (out / "addresses" / "unnamed-1" / "output.txt").read_text(encoding="utf-8")
    assert f"Unsafe: layers.addresses[0].name: {name!r} is not a safe name: it must match " in log


@pytest.mark.parametrize("escaped", ["a\\u0000b", "a\\ud800"], ids=["NUL", "lone-surrogate"])
def test_nul_or_surrogate_name_is_a_clear_error(fixtures: Path, tmp_path: Path, escaped: str) -> None:
    # Both crashed process-one with a traceback and no index.json; the file is now refused when read.
    text = (fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8")
    document = json.loads(text)
    document["name"] = "PLACEHOLDER"
    source = tmp_path / "source.json"
    source.write_text(json.dumps(document).replace("PLACEHOLDER", escaped), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "openaddr", "process-one", str(source), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"openaddr process-one: {source}: name: the string holds ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_state_directory_behind_a_link_is_refused(fixtures: Path, tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out"
    (out / "addresses").mkdir(parents=True)
    (out / "addresses" / "primary").symlink_to(victim, target_is_directory=True)
    before = _files_outside(tmp_path, out)
    assert process_one(fixtures / "sources" / "us-wy-park.json", out) == 2
    assert _files_outside(tmp_path, out) == before


@pytest.mark.parametrize(
    ("claimed", "hours"), [(None, 3.0), (2, 2.0), (48, 24.0), (float("nan"), 3.0), ([], 3.0)]
)
def test_entry_deadline_caps_the_timeout_a_source_claims(claimed: object, hours: float) -> None:
    from openaddr.process_one import entry_deadline
    from openaddr.sources import LayerEntry

    data = {} if claimed is None else {"timeout": claimed}
    entry = LayerEntry(source=None, layer="addresses", index=0, name="x", data=data)  # type: ignore[arg-type]
    assert entry_deadline(entry, start=1000.0) == 1000.0 + hours * 3600.0
