"""Storage backends: a local folder (tmp_path) and S3 (moto's real server on loopback).

The published run comes from a real ``openaddr conform`` of a fixture source with a non-ASCII name
(``fr/la-réunion.json``); expected names and contents are read from that state directory with ``zipfile``,
``gzip`` and ``json``, never from our storage's own output.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.request import urlopen

import pytest

from openaddr.cli import main
from openaddr.outputs import write_state
from openaddr.storage import (
    ENDPOINT_ENV,
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    check_key,
    open_storage,
    package_key,
    public_state,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# moto's S3 server fixtures (tests/ is on sys.path through the root conftest)

SOURCE = "fr/la-réunion.json"
DATA = "BAN_licence_gratuite_repartage_974.zip"
MiB = 1 << 20


class Injected(RuntimeError):
    """The failure a test injects into one write."""


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _fetch(url: str) -> bytes:
    with urlopen(url, timeout=10) as response:  # file:// for the local backend, http:// for moto
        body: bytes = response.read()
    return body


def _state(path: Path) -> dict[str, Any]:
    keys, values = json.loads(path.read_bytes())
    return dict(zip(keys, values, strict=True))


@pytest.fixture(scope="module")
def conformed(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real state directory: ``openaddr conform`` output plus the downloaded data as ``cache.zip``."""
    out = tmp_path_factory.mktemp("state") / "la-réunion" / "addresses" / "primary"
    argv = ["conform", str(fixtures / "sources" / SOURCE), str(fixtures / "data" / DATA)]
    assert main([*argv, "--layer", "addresses", "--out", str(out)]) == 0
    # process-one keeps the download as cache.<ext> and names it in the state (processing.md §1.3, §9.7)
    shutil.copyfile(fixtures / "data" / DATA, out / "cache.zip")
    write_state(out, {**_state(out / "index.json"), "cache": "cache.zip"})
    (out / ".out.csv.part").write_bytes(b"half-written")  # never published
    (out / "scratch").mkdir()  # nor are folders
    (out / "scratch" / "sample.json").write_bytes(b"[]")
    return out


@pytest.fixture
def state_dir(conformed: Path, tmp_path: Path) -> Path:
    """A private copy of the conformed state directory."""
    return Path(shutil.copytree(conformed, tmp_path / "state"))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend: a folder under tmp_path, or a fresh bucket (below a prefix) on moto's server."""
    if request.param == "local":
        return open_storage(f"file://{tmp_path / 'store'}")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/machine")


def _record(storage: Storage, monkeypatch: pytest.MonkeyPatch, fail: Callable[[str, str], bool]) -> list[str]:
    """Record every write as ``stage:<key>`` or ``final:<key>``; raise :class:`Injected` where ``fail`` says.

    S3: botocore's parameter-build event of each request, i.e. what reaches the server (single and multipart
    uploads, copies). Local: the backend's write and rename calls.
    """
    writes: list[str] = []

    def note(key: str) -> None:
        phase = "stage" if "/.staging-" in key else "final"
        writes.append(f"{phase}:{key}")
        if fail(phase, key):
            raise Injected(key)

    if isinstance(storage, S3Storage):
        written = ("PutObject", "CopyObject", "CreateMultipartUpload")

        def on_request(params: dict[str, Any], model: Any, **_: Any) -> None:
            if model.name in written:
                note(params["Key"][len("machine/") :])

        storage.client.meta.events.register("before-parameter-build.s3", on_request)
        storage.part_client.meta.events.register("before-parameter-build.s3", on_request)
    else:
        put_file, put_bytes, promote = storage.put_file, storage.put_bytes, storage._promote

        def record_file(local: Path, key: str, **kw: Any) -> str:
            note(key)
            return put_file(local, key, **kw)

        def record_bytes(data: bytes, key: str, **kw: Any) -> str:
            note(key)
            return put_bytes(data, key, **kw)

        def record_promote(staged: str, final: str, content_type: str) -> None:
            note(final)
            promote(staged, final, content_type)

        monkeypatch.setattr(storage, "put_file", record_file)
        monkeypatch.setattr(storage, "put_bytes", record_bytes)
        monkeypatch.setattr(storage, "_promote", record_promote)
    return writes


# --------------------------------------------------------------------------------------------------------------
# Choosing a backend, keys, URLs


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("file:///srv/results", LocalStorage, "/srv/results"),
        ("file://localhost/srv/results", LocalStorage, "/srv/results"),
        ("file:///srv/caf%C3%A9", LocalStorage, "/srv/café"),
        ("/srv/results", LocalStorage, "/srv/results"),
        ("s3://data.openaddresses.io", S3Storage, "data.openaddresses.io:"),
        ("s3://bucket/machine/prod/", S3Storage, "bucket:machine/prod"),
    ],
)
def test_open_storage_chooses_the_backend_by_url(url: str, kind: type, where: str) -> None:
    storage = open_storage(url)
    assert type(storage) is kind
    if isinstance(storage, LocalStorage):
        assert storage.root == Path(where)
    else:
        assert f"{storage.bucket}:{storage.prefix}" == where


def test_open_storage_makes_a_relative_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("results")
    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path / "results"


@pytest.mark.parametrize(
    "url", ["http://example.com/x", "s3:///prefix", "file://server/share", "ftp://host/x"]
)
def test_open_storage_rejects_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        open_storage(url)


@pytest.mark.parametrize(
    "key", ["", "/runs/1", "runs/1/", "runs//1", "runs/../etc", "./runs", "runs\\1", "a\x00b"]
)
def test_invalid_keys_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        check_key(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        LocalStorage(tmp_path).put_bytes(b"x", key)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        ("s3://results", {}, "https://results.s3.amazonaws.com/runs/1/fr/la-r%C3%A9union.zip"),
        ("s3://results/ci", {}, "https://results.s3.amazonaws.com/ci/runs/1/fr/la-r%C3%A9union.zip"),
        # dotted names cannot be served by virtual-host TLS: path style
        (
            "s3://data.openaddresses.io",
            {},
            "https://s3.amazonaws.com/data.openaddresses.io/runs/1/fr/la-r%C3%A9union.zip",
        ),
        (
            "s3://data.openaddresses.io",
            {"public_url": "https://data.openaddresses.io/"},
            "https://data.openaddresses.io/runs/1/fr/la-r%C3%A9union.zip",
        ),
        (
            "s3://bucket/p",
            {"endpoint_url": "http://127.0.0.1:9000/"},
            "http://127.0.0.1:9000/bucket/p/runs/1/fr/la-r%C3%A9union.zip",
        ),
        (
            "/srv/results",
            {"public_url": "http://localhost:5000/files"},
            "http://localhost:5000/files/runs/1/fr/la-r%C3%A9union.zip",
        ),
        ("/srv/results", {}, "file:///srv/results/runs/1/fr/la-r%C3%A9union.zip"),
    ],
)
def test_public_urls(
    url: str, options: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert open_storage(url, **options).url("runs/1/fr/la-réunion.zip") == expected


def test_endpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:4566")
    storage = open_storage("s3://bucket")
    assert isinstance(storage, S3Storage)
    assert storage.endpoint_url == "http://127.0.0.1:4566"
    assert storage.url("a b+c") == "http://127.0.0.1:4566/bucket/a%20b%2Bc"


# --------------------------------------------------------------------------------------------------------------
# Objects


@pytest.mark.parametrize(
    "key", ["runs/1/sample.json", "runs/1/fr/la-réunion.zip", "runs/1/ünï cødé + 100%.txt"]
)
def test_round_trip(storage: Storage, key: str, tmp_path: Path) -> None:
    data = f"{key}\n".encode() * 1000
    assert not storage.exists(key)
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes(key)
    assert storage.put_bytes(data, key) == storage.url(key)
    assert storage.exists(key)
    assert storage.get_bytes(key) == data
    assert _fetch(storage.url(key)) == data  # the public URL really names the object

    local = tmp_path / "upload.bin"
    local.write_bytes(data[::-1])
    assert storage.put_file(local, key) == storage.url(key)  # overwrites
    assert storage.get_bytes(key) == data[::-1]
    assert storage.list_keys("runs/1") == [key]


def test_put_file_gzip(storage: Storage, state_dir: Path) -> None:
    original = (state_dir / "out.geojson").read_bytes()
    url = storage.put_file(state_dir / "out.geojson", "runs/2/out.geojson.gz", gzip=True)
    stored = storage.get_bytes("runs/2/out.geojson.gz")
    assert stored[:2] == b"\x1f\x8b"
    assert gzip.decompress(stored) == original
    assert gzip.decompress(_fetch(url)) == original
    # reproducible: no file name, modification time 0
    again = storage.put_file(state_dir / "out.geojson", "runs/2/again.gz", gzip=True)
    assert _fetch(again) == stored


def test_list_and_delete_prefix_work_on_folders(storage: Storage) -> None:
    for key in ("runs/1/a.txt", "runs/1/b/c.txt", "runs/10/a.txt", "runs/1.txt"):
        storage.put_bytes(key.encode(), key)
    assert storage.list_keys("runs/1") == ["runs/1/a.txt", "runs/1/b/c.txt"]
    assert storage.list_keys("runs/1/") == ["runs/1/a.txt", "runs/1/b/c.txt"]
    storage.delete_prefix("runs/1")
    assert storage.list_keys("runs") == ["runs/1.txt", "runs/10/a.txt"]
    storage.delete_prefix("runs/nothing")
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.delete_prefix("")
    assert storage.list_keys("runs") == ["runs/1.txt", "runs/10/a.txt"]


def test_local_writes_never_leave_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes(b"old", "runs/1/output.txt")

    def broken_copy(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(b"half")
        raise Injected(str(dst))

    monkeypatch.setattr(shutil, "copyfile", broken_copy)
    source = tmp_path / "new.txt"
    source.write_bytes(b"new")
    with pytest.raises(Injected):
        storage.put_file(source, "runs/1/output.txt")
    assert _snapshot(tmp_path / "store") == {"runs/1/output.txt": b"old"}


@pytest.mark.integration
def test_s3_objects_carry_content_types(state_dir: Path, s3_bucket: str, s3_client: Any) -> None:
    storage = open_storage(f"s3://{s3_bucket}/machine")
    urls = storage.publish_run(3, state_dir)
    types = {
        name: s3_client.head_object(Bucket=s3_bucket, Key=f"machine/runs/3/{name}")["ContentType"]
        for name in urls
    }
    assert types == {
        "cache.zip": "application/zip",
        "fr/la-réunion.zip": "application/zip",
        "index.json": "application/json",
        "index.txt": "text/plain; charset=utf-8",
        "out.geojson.gz": "application/gzip",
        "output.txt": "text/plain; charset=utf-8",
        "preview.png": "image/png",
        "sample.json": "application/json",
        "stats.json": "application/json",
    }


# --------------------------------------------------------------------------------------------------------------
# Publishing a run


def test_publish_run_layout_and_urls(storage: Storage, state_dir: Path) -> None:
    before = _snapshot(state_dir)
    urls = storage.publish_run(7, state_dir)

    # <source>.zip is named by the package's own members (processing.md §9.2)
    with zipfile.ZipFile(state_dir / "la-réunion.zip") as zf:
        vrt = next(name for name in zf.namelist() if name.endswith(".vrt"))
    assert vrt == "fr/la-réunion.vrt"
    published = {
        "cache.zip": "cache.zip",
        "sample.json": "sample.json",
        "fr/la-réunion.zip": "la-réunion.zip",
        "out.geojson.gz": "out.geojson",
        "output.txt": "output.txt",
        "preview.png": "preview.png",
        "stats.json": "stats.json",
        "index.txt": "index.txt",
        "index.json": "index.json",
    }
    assert set(urls) == set(published)
    assert storage.list_keys("runs/7") == sorted(f"runs/7/{name}" for name in published)
    for name, url in urls.items():
        assert url == storage.url(f"runs/7/{name}")
    for name in ("cache.zip", "sample.json", "fr/la-réunion.zip", "output.txt", "preview.png", "stats.json"):
        assert _fetch(urls[name]) == before[published[name]], name
    assert gzip.decompress(_fetch(urls["out.geojson.gz"])) == before["out.geojson"]

    # the published state names public URLs; the rest is the local state as it was
    local = _state(state_dir / "index.json")
    remote = _state_from(_fetch(urls["index.json"]))
    assert list(remote) == list(local)
    assert remote["cache"] == urls["cache.zip"]
    assert remote["sample"] == urls["sample.json"]
    assert remote["processed"] == urls["fr/la-réunion.zip"]  # out.csv is published inside the zip
    assert remote["output"] == urls["output.txt"]
    assert remote["preview"] == urls["preview.png"]
    changed = {"cache", "sample", "processed", "output", "preview"}
    assert {k: v for k, v in remote.items() if k not in changed} == {
        k: v for k, v in local.items() if k not in changed
    }
    lines = _fetch(urls["index.txt"]).decode("utf-8").split("\r\n")
    assert lines[0] == "\t".join(local)
    assert urls["fr/la-réunion.zip"] in lines[1].split("\t")

    assert _snapshot(state_dir) == before  # the state directory is left as it was


def _state_from(data: bytes) -> dict[str, Any]:
    keys, values = json.loads(data)
    return dict(zip(keys, values, strict=True))


def test_index_json_is_published_last(
    storage: Storage, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _record(storage, monkeypatch, lambda phase, key: False)
    urls = storage.publish_run(8, state_dir)
    stage = [w for w in writes if w.startswith("stage:")]
    final = [w for w in writes if w.startswith("final:")]
    assert len(stage) == len(final) == len(urls)
    assert writes == stage + final  # nothing final before everything is staged
    assert final[-2:] == ["final:runs/8/index.txt", "final:runs/8/index.json"]
    assert not any("staging" in key for key in storage.list_keys("runs/8"))


def test_publish_run_replaces_an_earlier_publication(storage: Storage, state_dir: Path) -> None:
    first = storage.publish_run(9, state_dir)
    assert _state_from(storage.get_bytes("runs/9/index.json"))["preview"] == first["preview.png"]
    storage.put_bytes(b"left by a killed worker", "runs/9/.staging-dead/sample.json")
    (state_dir / "preview.png").unlink()
    second = storage.publish_run("9", state_dir)
    assert "preview.png" not in second
    assert storage.list_keys("runs/9") == sorted(f"runs/9/{name}" for name in second)


@pytest.mark.parametrize(
    ("phase", "name"),
    [
        ("stage", "stats.json"),  # an upload fails
        ("stage", "index.json"),
        ("final", "out.geojson.gz"),  # a copy to the final key fails
        ("final", "index.json"),
    ],
)
def test_failure_half_way_leaves_no_partial_run(
    storage: Storage, state_dir: Path, monkeypatch: pytest.MonkeyPatch, phase: str, name: str
) -> None:
    storage.put_bytes(b"another run", "runs/100/index.json")
    _record(storage, monkeypatch, lambda p, key: p == phase and key.endswith(f"/{name}"))
    with pytest.raises(Injected, match=name):
        storage.publish_run(10, state_dir)
    assert storage.list_keys("runs/10") == []
    assert storage.list_keys("runs") == ["runs/100/index.json"]


def test_failed_upload_keeps_the_earlier_publication(
    storage: Storage, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.publish_run(11, state_dir)
    published = {key: storage.get_bytes(key) for key in storage.list_keys("runs/11")}
    _record(storage, monkeypatch, lambda phase, key: phase == "stage" and key.endswith("/sample.json"))
    with pytest.raises(Injected):
        storage.publish_run(11, state_dir)
    assert {key: storage.get_bytes(key) for key in storage.list_keys("runs/11")} == published


def test_crash_log_is_published_as_output(storage: Storage, tmp_path: Path) -> None:
    # the subprocess died before writing its state: only its log exists (machine-ci.md §5 step 3)
    empty = tmp_path / "state"
    empty.mkdir()
    log = tmp_path / "process-one.log"
    log.write_text("Traceback (most recent call last):\n  MemoryError\n", encoding="utf-8")
    urls = storage.publish_run(12, empty, output=log)
    assert list(urls) == ["output.txt"]
    assert storage.get_bytes("runs/12/output.txt") == log.read_bytes()
    assert storage.list_keys("runs/12") == ["runs/12/output.txt"]


def test_state_text_is_written_when_missing(storage: Storage, state_dir: Path) -> None:
    (state_dir / "index.txt").unlink()
    urls = storage.publish_run(14, state_dir)
    assert list(urls)[-2:] == ["index.txt", "index.json"]
    header, values = storage.get_bytes("runs/14/index.txt").decode("utf-8").split("\r\n")[:2]
    assert header.split("\t") == list(_state(state_dir / "index.json"))
    assert urls["sample.json"] in values.split("\t")


def test_nothing_to_publish_is_refused(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to publish"):
        storage.publish_run(15, tmp_path)


def test_clashing_names_are_refused(storage: Storage, state_dir: Path) -> None:
    # a source named sources/cache.json would package cache.zip over the cache (processing.md §9.2)
    with zipfile.ZipFile(state_dir / "other.zip", "w") as zf:
        zf.writestr("cache.vrt", "<OGRVRTDataSource/>")
    with pytest.raises(ValueError, match=r"both be published as cache\.zip"):
        storage.publish_run(16, state_dir)
    assert storage.list_keys("runs") == []


def test_package_key(state_dir: Path, tmp_path: Path) -> None:
    assert package_key(state_dir / "la-réunion.zip") == "fr/la-réunion.zip"
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("README.txt", "no VRT here")
    assert package_key(tmp_path / "plain.zip") == "plain.zip"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../evil.vrt", "")
    assert package_key(tmp_path / "evil.zip") == "evil.zip"
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    assert package_key(tmp_path / "broken.zip") == "broken.zip"


def test_invalid_run_ids_are_refused(storage: Storage, state_dir: Path) -> None:
    for run_id in ("", "../1", ".staging-x", "1/2"):
        with pytest.raises(ValueError, match="invalid run id"):
            storage.publish_run(run_id, state_dir)


@pytest.mark.integration
def test_large_files_go_multipart(state_dir: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # S3 parts are at least 5 MiB; 11 MiB of incompressible bytes make three parts
    big = random.Random(20240601).randbytes(11 * MiB)
    (state_dir / "cache.zip").write_bytes(big)
    storage = open_storage(
        f"s3://{s3_bucket}/machine", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    operations: list[tuple[str, str]] = []

    def on_request(params: dict[str, Any], model: Any, **_: Any) -> None:
        operations.append((model.name, params.get("Key", "")))

    storage.client.meta.events.register("before-parameter-build.s3", on_request)
    # Upload requests go through the client without botocore's retries (storage.upload_file tries each 3 times)
    storage.part_client.meta.events.register("before-parameter-build.s3", on_request)
    urls = storage.publish_run(13, state_dir)

    staged = [k for op, k in operations if op == "UploadPart" and k.endswith("/cache.zip")]
    copied = [k for op, k in operations if op == "UploadPartCopy" and k.endswith("/cache.zip")]
    assert len(staged) == 3
    assert all("/.staging-" in k for k in staged)
    assert copied == ["machine/runs/13/cache.zip"] * 3
    assert ("PutObject", "machine/runs/13/cache.zip") not in operations
    assert hashlib.md5(_fetch(urls["cache.zip"])).digest() == hashlib.md5(big).digest()
    assert storage.list_keys("runs/13") == sorted(f"runs/13/{name}" for name in urls)


@pytest.mark.parametrize(
    ("state", "published", "expected"),
    [
        (
            {"cache": "cache.zip", "sample": "sample.json", "processed": "out.csv", "output": "output.txt"},
            ["cache.zip", "sample.json", "us/ca/a.zip", "out.geojson.gz", "output.txt"],
            {
                "cache": "U/cache.zip",
                "sample": "U/sample.json",
                "processed": "U/us/ca/a.zip",
                "output": "U/output.txt",
            },
        ),
        (  # other layer types publish their GeoJSON
            {"cache": "cache.json", "processed": "out.geojson", "preview": "preview.png"},
            ["cache.json", "out.geojson.gz", "preview.png"],
            {"cache": "U/cache.json", "processed": "U/out.geojson.gz", "preview": "U/preview.png"},
        ),
        (  # a legacy cache URL stays; a file that was not published becomes null
            {
                "cache": "http://example.com/c.zip",
                "sample": "sample.json",
                "processed": None,
                "fingerprint": "ab",
            },
            ["output.txt"],
            {"cache": "http://example.com/c.zip", "sample": None, "processed": None, "fingerprint": "ab"},
        ),
    ],
)
def test_public_state(state: dict[str, Any], published: list[str], expected: dict[str, Any]) -> None:
    assert public_state(state, {name: f"U/{name}" for name in published}) == expected


# --------------------------------------------------------------------------------------------------------------
# Multipart uploads: 3 tries a part (machine-ci.md §8), against moto's server behind a loopback proxy that fails
# chosen parts


def _big_file(path: Path, mib: int) -> bytes:
    data = b"".join(bytes([i]) * (1 << 20) for i in range(mib))
    path.write_bytes(data)
    return data


@pytest.mark.integration
def test_multipart_upload_retries_a_failing_part(
    flaky_s3: Any, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    from openaddr.storage import S3Storage

    storage = S3Storage(
        s3_bucket, "machine", endpoint_url=flaky_s3.url, multipart_threshold=5 << 20,
        multipart_chunksize=5 << 20, retry_wait=0.01,
    )  # fmt: skip
    data = _big_file(tmp_path / "big.zip", 12)  # three parts: 5, 5 and 2 MiB
    flaky_s3.fail_part(2, times=2)
    storage.put_file(tmp_path / "big.zip", "collections/big.zip")
    assert [flaky_s3.part_requests(n) for n in (1, 2, 3)] == [1, 3, 1]  # part 2: two failures, then stored
    stored = s3_client.get_object(Bucket=s3_bucket, Key="machine/collections/big.zip")
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "application/zip"
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.integration
def test_a_part_failing_three_times_publishes_nothing(
    flaky_s3: Any, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    from openaddr.storage import S3Storage, StorageError

    storage = S3Storage(
        s3_bucket, "machine", endpoint_url=flaky_s3.url, multipart_threshold=5 << 20,
        multipart_chunksize=5 << 20, retry_wait=0.01,
    )  # fmt: skip
    storage.put_bytes(b"the complete older file", "collections/a.zip")
    _big_file(tmp_path / "a.zip", 11)
    flaky_s3.fail_part(3, times=3)
    with pytest.raises(
        StorageError, match=r"part 3 of s3://.*/machine/collections/\.staging-.*/a\.zip failed 3 times"
    ):
        storage.publish_files("collections", {"a.zip": tmp_path / "a.zip"})
    assert flaky_s3.part_requests(3) == 3
    # The stable name still gives the older complete file; no staging object or unfinished upload is left.
    assert storage.get_bytes("collections/a.zip") == b"the complete older file"
    assert storage.list_keys("collections") == ["collections/a.zip"]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.integration
def test_small_files_are_one_put_with_three_tries(flaky_s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    from openaddr.storage import S3Storage

    storage = S3Storage(s3_bucket, endpoint_url=flaky_s3.url, retry_wait=0.01)
    (tmp_path / "small.txt").write_bytes(b"small")
    storage.put_file(tmp_path / "small.txt", "small.txt")
    assert storage.get_bytes("small.txt") == b"small"
    assert sum(1 for method, _ in flaky_s3.requests if method == "PUT") == 1
