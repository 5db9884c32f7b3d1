"""The Machine's task bodies (:mod:`openaddr.machine`, machine-ci.md §5–§7) on real sources and real data.

Sources are real files of ``corpus/sources`` and ``fixtures/machine/sources``; data is a fixture served by the
loopback ``http_server`` under a path of each test's own (so that request counts and layer digests never mix between
tests sharing a database); storage is a :class:`~openaddr.storage.LocalStorage` in ``tmp_path``. Tests that record
runs and jobs run on SQLite and on the real PostgreSQL (``db_url``; PostgreSQL with a database of this module's own,
since the task bodies commit). How the subprocess ends on its own (the entry's deadline, memory limits) and what a
killed one leaves behind are tested on SQLite only, the database playing no part in them.

Expected values are read from the inputs directly: layer entries and their digests from the JSON of the source
files, the address count from the data with pyogrio, the process hash from the published zip.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import textwrap
import time
import uuid
import zipfile
from typing import TYPE_CHECKING, Any

import pyogrio
import pytest
import sqlalchemy as sa

import openaddr
from openaddr import machine
from openaddr.db import jobs as db_jobs, make_engine, runs as db_runs, upgrade
from openaddr.db.results import latest_runs
from openaddr.errors import SourceProblem
from openaddr.outputs import STATE_KEYS
from openaddr.sources_repo import SourceFile, SourceListing, git_blob_sha
from openaddr.storage import LocalStorage
from tests.db_fixtures import BACKENDS, create_database, drop_database
from tests.servers import send

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.servers import LoopbackHTTPServer

PARK_PATH = "sources/us/wy/park.json"
PARK_LABEL = "us/wy/park/addresses/primary"
INVALID = SourceProblem.invalid_source.value
DOWNLOAD_FAILED = SourceProblem.download_source_failed.value
CACHE_FAILED = "Failed to produce cache data"
#: Processing order of layer types (processing.md §2.6).
LAYER_ORDER = ("addresses", "parcels", "buildings", "centerlines")
#: Real multi-layer corpus files: two ``city`` address entries (the second becomes ``city-2``); layers listed in
#: the file as buildings before parcels; three layer types.
MULTI_LAYER = ("us/oh/city_of_perrysburg.json", "ca/on/city_of_mississauga.json", "za/gt/tshwane.json")
COMMIT = "c0ffee" + "0" * 34


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def child_env(allow_private_urls: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The processing subprocess's environment: short network limits, and a temporary folder of its own.

    ``TMPDIR`` is only given to the child (not set here), so this process's :mod:`tempfile` is left alone.
    """
    for name, value in {
        "OPENADDR_CONNECT_TIMEOUT": "2",
        "OPENADDR_READ_TIMEOUT": "0.5",
        "OPENADDR_FTP_TIMEOUT": "2",
        "OPENADDR_RETRY_DELAYS": "0.01,0.01",
        "OPENADDR_MAX_RETRY_AFTER": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENADDR_ALLOWED_PRIVATE_NETWORKS", machine.MEMORY_LIMIT_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    child_tmp = tmp_path / "child-tmp"
    child_tmp.mkdir()
    return {**os.environ, "TMPDIR": str(child_tmp)}


@pytest.fixture(scope="module")
def machine_postgres_url(postgres_admin_url: sa.URL) -> Iterator[sa.URL]:
    """A migrated PostgreSQL database of this module's own, dropped at the end.

    The task bodies commit their own transactions, so their rows stay; the session's shared database must not see
    them (tests there count the rows of a table).
    """
    url = create_database(postgres_admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> sa.URL:
    """``tests.db_fixtures.db_url`` with this module's PostgreSQL database."""
    if request.param == "postgresql":
        url: sa.URL = request.getfixturevalue("machine_postgres_url")
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    path = tmp_path / "machine.db"
    shutil.copyfile(template, path)
    return sa.make_url(f"sqlite:///{path}")


@pytest.fixture
def engine(db_url: sa.URL) -> Iterator[sa.Engine]:
    """An engine on the test's database; every call commits, as in the tasks."""
    engine = make_engine(db_url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


@pytest.fixture
def uid() -> str:
    """A token of this test: job ids, set owners and server paths nobody else uses."""
    return uuid.uuid4().hex[:12]


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- helpers ----------------------------------------------------------------------------------------------------


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def digest(coverage: Any, entry: Any) -> str:
    """SHA-1 of the canonical JSON of ``[coverage, entry]`` (machine-ci.md §5 step 1), computed here."""
    text = json.dumps([coverage, entry], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()


def expected_entries(path: str, document: dict[str, Any], *, prefix: str, blob_sha: str | None) -> list[dict]:
    """The planned entries of a v2 document, read off its JSON: layer types in processing order, list order within
    a type, a repeated name suffixed ``-<1-based position>`` (processing.md §2.6)."""
    coverage = document.get("coverage")
    source = path.removeprefix("sources/").removesuffix(".json")
    found = []
    for layer in LAYER_ORDER:
        seen: set[str] = set()
        for index, data in enumerate(document["layers"].get(layer, [])):
            name = data.get("name") or "primary"
            if name in seen:
                name = f"{name}-{index + 1}"
            seen.add(name)
            found.append(
                {
                    "path": path,
                    "layer": layer,
                    "name": name,
                    "source_key": f"{prefix}/{path.removeprefix('sources/')}",
                    "blob_sha": blob_sha,
                    "digest": digest(coverage, data),
                    "timeout": data["timeout"] * 3600.0 if "timeout" in data else 3 * 3600.0,
                    "size": "large" if data.get("conform", {}).get("size") == "large" else "standard",
                    "label": f"{source}/{layer}/{name}",
                }
            )
    return found


def park_document(fixtures: Path, url: str, **changes: Any) -> dict[str, Any]:
    """The real us-wy-park source (v1), its data at ``url``."""
    document = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    document.update(data=url, **changes)
    return document


def serve_park(http_server: LoopbackHTTPServer, fixtures: Path, uid: str) -> tuple[str, str]:
    """Serve the us-wy-park data under a path of this test; return the path (for ``hits``) and the URL."""
    route = f"/machine/{uid}/us-wy-park.zip"
    data = (fixtures / "data" / "us-wy-park.zip").read_bytes()
    return route, http_server.add(route, data, content_type="application/zip")


def source_item(path: str, content: str | bytes, blob_sha: str | None = None, *, b64: bool = False) -> dict:
    raw = content.encode() if isinstance(content, str) else content
    item: dict[str, Any] = {"path": path, "blob_sha": blob_sha or git_blob_sha(raw)}
    if b64:
        item["content_b64"] = base64.b64encode(raw).decode()
    else:
        item["content"] = raw.decode()
    return item


def ci_conf(job_id: str, *items: dict, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "commit_sha": COMMIT, "sources": list(items), **extra}


def plan(engine: sa.Engine, storage: LocalStorage, conf: dict[str, Any]) -> list[dict[str, Any]]:
    return machine.plan_ci_job(engine, storage, conf, dag_run_id=f"ci__{conf['job_id']}")


def process(
    engine: sa.Engine,
    storage: LocalStorage,
    argument: dict[str, Any],
    scratch: Path,
    env: dict[str, str],
    **kwargs: Any,
) -> dict[str, Any]:
    """``process_source`` with one mapped task's arguments, as planned."""
    entry = kwargs.pop("entry", argument["entry"])
    owner = machine.RunOwner(**argument["run_owner"])
    return machine.process_source(engine, storage, entry, owner, scratch=scratch, env=env, **kwargs)


def published(storage: LocalStorage, run_id: int) -> list[str]:
    """Names published under ``runs/<id>/``."""
    prefix = f"runs/{run_id}/"
    return [key.removeprefix(prefix) for key in storage.list_keys(f"runs/{run_id}")]


def ti(job_id: str, map_index: int = 0, try_number: int = 1) -> db_runs.AirflowTask:
    return db_runs.AirflowTask("openaddr_ci", f"ci__{job_id}", "process_source", map_index, try_number)


def state_of(**values: Any) -> dict[str, Any]:
    """A complete state record (processing.md §9.7) with ``values``."""
    state: dict[str, Any] = dict.fromkeys(STATE_KEYS)
    state.update(skipped=False, **values)
    return state


GOOD = {
    "cache": "cache.zip",
    "sample": "sample.json",
    "processed": "out.csv",
    "output": "output.txt",
    "address count": 346,
    "cache time": "0:00:01",
    "process time": "0:00:02",
}
BAD = {"cache": None, "output": "output.txt", "source problem": DOWNLOAD_FAILED}


def read_corpus(corpus_sources: Path, name: str) -> tuple[bytes, dict[str, Any]]:
    raw = (corpus_sources / name).read_bytes()
    return raw, json.loads(raw)


# -- plan_ci_job -------------------------------------------------------------------------------------------------


def test_plan_ci_job_records_the_job_and_expands_real_multi_layer_files(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    job_id = f"job-{uid}"
    files = []
    for index, name in enumerate(MULTI_LAYER):
        raw, document = read_corpus(corpus_sources, name)
        if index == 0:  # an entry with its own time limit, in hours
            document["layers"]["parcels"][0]["timeout"] = 5
            raw = json.dumps(document, indent=4).encode()
        files.append((f"sources/{name}", raw, document))
    github = {
        "owner": "openaddresses",
        "repository": "openaddresses",
        "status_url": f"https://api.github.test/repos/oa/oa/statuses/{COMMIT}",
        "comments_url": "https://api.github.test/repos/oa/oa/issues/7/comments",
    }
    # The webhook's base64 form and the plain-text form of a manual trigger, mixed.
    items = [source_item(path, raw, f"blob{i}", b64=i != 1) for i, (path, raw, _) in enumerate(files)]
    conf = ci_conf(job_id, *items, github=github, delivery_id=f"delivery-{uid}", event="pull_request")

    planned = plan(engine, storage, conf)

    expected = [
        entry
        for i, (path, _, document) in enumerate(files)
        for entry in expected_entries(path, document, prefix=f"jobs/{job_id}/sources", blob_sha=f"blob{i}")
    ]
    owner = {
        "kind": "ci",
        "job_id": job_id,
        "set_id": None,
        "commit_sha": COMMIT,
        "rerun": False,
        "pull_request": True,
    }
    assert planned == [{"entry": entry, "run_owner": owner} for entry in expected]
    # Read off the files by hand as well: the naming and ordering rules, and the hours of ``timeout``.
    assert [(e["layer"], e["name"]) for e in expected[:4]] == [
        ("addresses", "city"),
        ("addresses", "city-2"),
        ("parcels", "city"),
        ("buildings", "city"),
    ]
    assert [e["timeout"] for e in expected[:4]] == [10800.0, 10800.0, 18000.0, 10800.0]
    assert [(e["layer"], e["label"]) for e in expected[4:6]] == [
        ("parcels", "ca/on/city_of_mississauga/parcels/city"),
        ("buildings", "ca/on/city_of_mississauga/buildings/city"),
    ]
    assert len(planned) == 4 + 2 + 3

    for path, raw, _ in files:  # the snapshot the runs will read, byte for byte
        assert storage.get_bytes(f"jobs/{job_id}/sources/{path.removeprefix('sources/')}") == raw
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert (job["github_owner"], job["github_repository"]) == ("openaddresses", "openaddresses")
    assert (job["github_status_url"], job["github_comments_url"]) == (
        github["status_url"],
        github["comments_url"],
    )
    assert (job["github_delivery_id"], job["github_event"]) == (f"delivery-{uid}", "pull_request")
    assert (job["airflow_dag_run_id"], job["is_rerun"]) == (f"ci__{job_id}", False)
    assert job["task_files"] == {f"blob{i}": path for i, (path, _, _) in enumerate(files)}
    # Nothing processed yet: every file pending, every planned entry listed without a run.
    assert job["status"] is None
    assert job["file_states"] == {path: None for path, _, _ in files}
    for path, _, _ in files:
        result = job["file_results"][path]
        assert result["planned"] is True
        assert [(e["layer"], e["name"], e["run_id"]) for e in result["entries"]] == [
            (e["layer"], e["name"], None) for e in expected if e["path"] == path
        ]
    assert db_runs.job_runs(engine, job_id) == []


def test_large_entries_are_planned_into_their_own_tier(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    # us/countrywide.json is the corpus's one nationwide FileGDB marked ``conform.size: large``.
    names = ("us/countrywide.json", MULTI_LAYER[0])
    items = [
        source_item(f"sources/{name}", read_corpus(corpus_sources, name)[0], f"blob{i}")
        for i, name in enumerate(names)
    ]
    planned = plan(engine, storage, ci_conf(f"job-{uid}", *items))

    tiers = machine.by_tier(planned)
    assert list(tiers) == ["standard", "large"]
    assert [a["entry"]["label"] for a in tiers["large"]] == ["us/countrywide/addresses/country"]
    assert {a["entry"]["path"] for a in tiers["standard"]} == {f"sources/{MULTI_LAYER[0]}"}
    assert len(tiers["standard"]) + 1 == len(planned)
    assert {a["entry"]["size"] for a in tiers["standard"]} == {"standard"}
    assert machine.by_tier([]) == {"standard": [], "large": []}
    # An entry planned before tiers existed (no ``size`` in its XCom) is standard.
    legacy = {
        "entry": {k: v for k, v in tiers["standard"][0]["entry"].items() if k != "size"},
        "run_owner": {},
    }
    assert machine.by_tier([legacy])["standard"] == [legacy]


@pytest.mark.parametrize(
    ("conform", "size"),
    [({"size": "large"}, "large"), ({"size": "standard"}, "standard"), ({}, "standard"), (None, "standard")],
)
def test_entry_size(conform: Any, size: str) -> None:
    assert machine.entry_size({"conform": conform} if conform is not None else {}) == size


def test_plan_ci_job_leaves_a_job_the_webhook_recorded_alone(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    job_id = f"job-{uid}"
    raw, document = read_corpus(corpus_sources, MULTI_LAYER[2])
    path = f"sources/{MULTI_LAYER[2]}"
    db_jobs.create_job(
        engine,
        job_id=job_id,
        task_files={"blob": path},
        github_owner="webhook-owner",
        github_repository="webhook-repository",
        github_status_url="https://api.github.test/webhook/status",
        github_comments_url="https://api.github.test/webhook/comments",
        github_delivery_id=f"delivery-{uid}",
        github_event="push",
        airflow_dag_run_id=f"ci__{job_id}",
    )
    before = db_jobs.get_job(engine, job_id)
    assert before is not None
    conf = ci_conf(
        job_id,
        source_item(path, raw, "blob"),
        github={"owner": "other", "repository": "other", "status_url": "https://elsewhere/status"},
    )

    planned = plan(engine, storage, conf)

    assert [p["entry"] for p in planned] == expected_entries(
        path, document, prefix=f"jobs/{job_id}/sources", blob_sha="blob"
    )
    after = db_jobs.get_job(engine, job_id)
    assert after is not None
    unchanged = (
        "github_owner",
        "github_repository",
        "github_status_url",
        "github_comments_url",
        "github_delivery_id",
        "github_event",
        "task_files",
        "sequence",
        "datetime_start",
        "airflow_dag_run_id",
    )
    assert {key: after[key] for key in unchanged} == {key: before[key] for key in unchanged}
    assert [e["name"] for e in after["file_results"][path]["entries"]] == ["city", "city", "city"]


def test_plan_ci_job_of_a_manual_trigger(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path
) -> None:
    """No job id in the conf: it comes from the DAG run id; the webhook's flat GitHub keys; a re-run flag."""
    raw, _ = read_corpus(corpus_sources, MULTI_LAYER[1])
    job_id = f"manual-{uuid.uuid4().hex[:8]}"
    conf = {
        "sources": [source_item(f"sources/{MULTI_LAYER[1]}", raw)],
        "owner": "flat-owner",
        "repository": "flat-repository",
        "status_url": "https://api.github.test/flat/status",
        "is_rerun": True,
    }
    planned = machine.plan_ci_job(engine, storage, conf, dag_run_id=f"ci__{job_id}")
    assert {p["run_owner"]["job_id"] for p in planned} == {job_id}
    assert {p["run_owner"]["rerun"] for p in planned} == {True}
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert (job["github_owner"], job["github_repository"], job["github_status_url"]) == (
        "flat-owner",
        "flat-repository",
        "https://api.github.test/flat/status",
    )
    assert job["is_rerun"] is True
    assert job["task_files"] == {git_blob_sha(raw): f"sources/{MULTI_LAYER[1]}"}


def test_invalid_files_are_recorded_as_failed_runs_and_not_planned(
    engine: sa.Engine,
    storage: LocalStorage,
    corpus_sources: Path,
    uid: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = f"job-{uid}"
    # Planning parses the files from memory: no temporary folder a killed task could leave behind (with this
    # missing temporary folder, making one would fail).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    good_raw, good = read_corpus(corpus_sources, MULTI_LAYER[2])
    _, province = read_corpus(corpus_sources, "ca/nb/province.json")
    province["layers"]["parcels"][0]["protocol"] = (
        "carrier-pigeon"  # one bad entry: the whole file is invalid
    )
    province_raw = json.dumps(province, indent=4).encode()
    broken_raw = b'{"schema": 2, "coverage": {"country": "us"'  # cut short: not JSON
    paths = {
        "good": f"sources/{MULTI_LAYER[2]}",
        "province": "sources/ca/nb/province.json",
        "broken": "sources/us/xx/broken.json",
    }
    conf = ci_conf(
        job_id,
        source_item(paths["good"], good_raw, "blob-good"),
        source_item(paths["province"], province_raw, "blob-province", b64=True),
        source_item(paths["broken"], broken_raw, "blob-broken", b64=True),
    )

    planned = plan(engine, storage, conf)

    assert [p["entry"] for p in planned] == expected_entries(
        paths["good"], good, prefix=f"jobs/{job_id}/sources", blob_sha="blob-good"
    )
    runs = db_runs.job_runs(engine, job_id)
    assert [(r["source_path"], r["source_layer"], r["layer_name"]) for r in runs] == [
        (paths["province"], "addresses", "state"),
        (paths["province"], "addresses", "state-french"),
        (paths["province"], "parcels", "state"),
        (paths["broken"], None, None),
    ]
    for run in runs:
        assert (run["status"], run["source_problem"], run["copy_of"]) == (False, INVALID, None)
        assert run["state"]["source problem"] == INVALID
        assert list(run["state"]) == [*STATE_KEYS, "run id", "process hash"]
        assert run["state"]["run id"] == run["id"]
        assert run["state"]["source"] == run["source_path"].rsplit("/", 1)[1]
        assert (run["job_id"], run["commit_sha"], run["code_version"]) == (
            job_id,
            COMMIT,
            openaddr.__version__,
        )
        assert run["message"].startswith(f"Invalid source: {run['source_path']}: ")
        assert str(storage.root) not in run["message"]
        assert "/tmp/" not in run["message"]
    province_message = runs[0]["message"]
    assert "Schema: layers.parcels[0].protocol" in province_message
    assert "not a JSON document" in runs[3]["message"]
    # One run per entry, without a digest: a run of an invalid file is never reused once the file is fixed.
    expected_province = expected_entries(paths["province"], province, prefix="", blob_sha=None)
    assert [(r["source_layer"], r["layer_name"]) for r in runs[:3]] == [
        (e["layer"], e["name"]) for e in expected_province
    ]
    assert [r["layer_digest"] for r in runs[:3]] == [None, None, None]
    assert (runs[0]["source_id"], bytes(runs[0]["source_data"])) == ("blob-province", province_raw)
    assert (runs[3]["source_id"], bytes(runs[3]["source_data"]), runs[3]["layer_digest"]) == (
        "blob-broken",
        broken_raw,
        None,
    )
    # Every file is kept as sent, the invalid ones too.
    assert storage.get_bytes(f"jobs/{job_id}/sources/us/xx/broken.json") == broken_raw
    assert storage.get_bytes(f"jobs/{job_id}/sources/ca/nb/province.json") == province_raw

    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert job["file_states"] == {paths["good"]: None, paths["province"]: False, paths["broken"]: False}
    assert job["status"] is False  # a failure shows at once, while the good file is still pending
    assert job["file_results"][paths["province"]]["message"] == province_message


def test_unsafe_name_makes_even_a_v1_file_invalid(
    engine: sa.Engine, storage: LocalStorage, fixtures: Path, uid: str
) -> None:
    # Advisory (v1) files are planned despite schema errors, but not with a name that would become a path.
    job_id = f"job-{uid}"
    park = json.loads((fixtures / "sources" / "us-wy-park.json").read_text(encoding="utf-8"))
    assert "schema" not in park
    park["name"] = "../../x"
    raw = json.dumps(park).encode()
    path = "sources/us/wy/park.json"
    assert plan(engine, storage, ci_conf(job_id, source_item(path, raw, "blob-park"))) == []
    (run,) = db_runs.job_runs(engine, job_id)
    assert (run["source_layer"], run["layer_name"], run["source_problem"]) == (
        "addresses",
        "unnamed-1",
        INVALID,
    )
    assert run["message"] == (
        f"Invalid source: {path}: addresses/unnamed-1: Unsafe: layers.addresses[0].name: '../../x' is not a safe "
        "name: it must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    )


NOT_A_SOURCE = "not a source file path"


@pytest.mark.parametrize(
    ("sources", "match"),
    [
        pytest.param([{"path": "data/us/wy/park.json", "content": "{}"}], NOT_A_SOURCE, id="other-folder"),
        pytest.param([{"path": "/sources/us/wy/park.json", "content": "{}"}], NOT_A_SOURCE, id="absolute"),
        pytest.param([{"path": "sources/../setup.json", "content": "{}"}], NOT_A_SOURCE, id="dot-dot"),
        pytest.param([{"path": "sources/us/wy/park.txt", "content": "{}"}], NOT_A_SOURCE, id="not-json"),
        pytest.param([{"path": "park.json", "content": "{}"}], NOT_A_SOURCE, id="top-level"),
        pytest.param([{"path": "sources//park.json", "content": "{}"}], NOT_A_SOURCE, id="empty-segment"),
        pytest.param([{"path": "sources/./park.json", "content": "{}"}], NOT_A_SOURCE, id="dot-segment"),
        pytest.param(
            [{"path": "sources/a.json", "content_b64": "not base64!"}], "not base64", id="bad-base64"
        ),
        pytest.param([{"path": "sources/a.json", "blob_sha": "x"}], "neither content nor", id="no-content"),
        pytest.param([{"content": "{}"}], "needs a path", id="no-path"),
        pytest.param("sources/a.json", "no 'sources' list", id="not-a-list"),
        pytest.param(None, "no 'sources' list", id="no-sources"),
        pytest.param([], "no 'sources' list", id="empty"),
        pytest.param(
            [{"path": f"sources/x/{i}.json", "content": "{}"} for i in range(201)],
            "at most 200",
            id="201-files",
        ),
    ],
)
def test_malformed_triggers_are_rejected_before_anything_is_recorded(
    sources: Any, match: str, engine: sa.Engine, storage: LocalStorage, uid: str
) -> None:
    job_id = f"job-{uid}"
    conf = {"job_id": job_id} if sources is None else {"job_id": job_id, "sources": sources}
    with pytest.raises(machine.TriggerError, match=match):
        plan(engine, storage, conf)
    assert db_jobs.get_job(engine, job_id) is None
    assert not storage.root.exists()


def test_base64_wrapped_as_githubs_contents_api_sends_it_is_accepted() -> None:
    content = json.dumps(
        {"schema": 2, "layers": {}, "coverage": {"country": "us"}, "note": "x" * 200}
    ).encode()
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(content).decode(), 60)) + "\n"
    (snapshot,) = machine.ci_sources({"sources": [{"path": "sources/a.json", "content_b64": wrapped}]})
    assert snapshot.content == content


@SQLITE_ONLY
def test_planning_again_records_an_invalid_file_once(
    engine: sa.Engine, storage: LocalStorage, uid: str
) -> None:
    job_id = f"job-{uid}"
    conf = ci_conf(job_id, source_item("sources/us/xx/broken.json", b'{"schema": 2, "layers": '))
    assert plan(engine, storage, conf) == []
    assert plan(engine, storage, conf) == []  # a retried plan_job
    (run,) = db_runs.job_runs(engine, job_id)
    assert run["source_problem"] == "Source does not match the schema"


def test_two_hundred_files_are_accepted() -> None:
    items = [{"path": f"sources/x/{i}.json", "content": "{}"} for i in range(machine.MAX_CI_FILES)]
    assert len(machine.ci_sources({"sources": items})) == 200


# -- process_source on real data --------------------------------------------------------------------------------


@pytest.mark.integration
def test_process_source_publishes_records_and_reuses_a_real_run(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    tmp_path: Path,
    uid: str,
) -> None:
    data = fixtures / "data" / "us-wy-park.zip"
    features = pyogrio.read_info(f"zip://{data}")["features"]
    route, url = serve_park(http_server, fixtures, uid)
    content = json.dumps(park_document(fixtures, url), indent=4)
    first_job = f"job-{uid}-1"
    [argument] = plan(engine, storage, ci_conf(first_job, source_item(PARK_PATH, content, "blob-park")))
    assert argument["entry"]["label"] == PARK_LABEL

    result = process(engine, storage, argument, scratch, child_env, task=ti(first_job))

    run_id = result["run_id"]
    assert result == {
        "run_id": run_id,
        "label": PARK_LABEL,
        "status": True,
        "message": db_runs.OK_MESSAGE,
        "skipped": False,
        "copy_of": None,
        "source_problem": None,
        "address_count": features,
        "seconds": result["seconds"],
    }
    assert 0 < result["seconds"] < 60
    assert http_server.hits[route] == 1
    run = db_runs.get_run(engine, run_id)
    assert run is not None
    assert (run["status"], run["message"], run["address_count"]) == (True, db_runs.OK_MESSAGE, features)
    assert (run["source_path"], run["source_layer"], run["layer_name"]) == (PARK_PATH, "addresses", "primary")
    assert (run["layer_digest"], run["source_id"]) == (argument["entry"]["digest"], "blob-park")
    assert bytes(run["source_data"]) == content.encode()
    assert (run["job_id"], run["set_id"], run["commit_sha"]) == (first_job, None, COMMIT)
    assert (run["airflow_ti"], run["airflow_try_number"]) == (ti(first_job).ti, 1)
    assert (run["worker_id"], run["code_version"]) == (machine.worker_id(), openaddr.__version__)
    assert run["stats"]["count"] == features
    # Park County, Wyoming: every point inside the United States (the quality gate's coverage check).
    assert (run["stats"]["outside_coverage"], run["stats"]["coverage_country"]) == (0, "US")
    assert run["cache_seconds"] is not None
    assert run["process_seconds"] is not None

    # Published under runs/<id>/, with the zip under the source's whole path (machine-ci.md §5 step 3).
    base = f"runs/{run_id}"
    names = published(storage, run_id)
    assert names == sorted(
        [
            "cache.zip",
            "index.json",
            "index.txt",
            "out.geojson.gz",
            "output.txt",
            "preview.png",
            "sample.json",
            "stats.json",
            "us/wy/park.zip",
        ]
    )
    state = run["state"]
    files = {
        "cache": "cache.zip",
        "sample": "sample.json",
        "processed": "us/wy/park.zip",
        "output": "output.txt",
        "preview": "preview.png",
    }
    for key, name in files.items():
        assert state[key] == storage.url(f"{base}/{name}")
    assert storage.get_bytes(f"{base}/cache.zip") == data.read_bytes()
    assert state["fingerprint"] == md5(data.read_bytes())
    zipped = storage.get_bytes(f"{base}/us/wy/park.zip")
    assert (state["run id"], state["process hash"]) == (run_id, md5(zipped))
    with zipfile.ZipFile(storage.path(f"{base}/us/wy/park.zip")) as archive:
        rows = archive.read("us/wy/park.csv").decode("utf-8").splitlines()
    assert len(rows) == features + 1  # header and one row per feature
    # The published state is the recorded one, and index.json was put in place last.
    keys, values = json.loads(storage.get_bytes(f"{base}/index.json"))
    assert keys == list(STATE_KEYS)
    assert dict(zip(keys, values, strict=True)) == {key: state[key] for key in STATE_KEYS}
    changed = {name: storage.path(f"{base}/{name}").stat().st_ctime_ns for name in names}
    assert changed["index.json"] == max(changed.values())
    # The job is recomputed; nothing is left in the scratch or the child's temporary folder.
    job = db_jobs.get_job(engine, first_job)
    assert job is not None
    assert (job["status"], job["file_states"]) == (True, {PARK_PATH: True})
    assert job["datetime_end"] is not None
    assert job["file_results"][PARK_PATH]["entries"][0]["run_id"] == run_id
    assert list(scratch.iterdir()) == []
    assert list((tmp_path / "child-tmp").iterdir()) == []

    # A second job within 10 days: the same entry is reused, nothing is downloaded.
    second_job = f"job-{uid}-2"
    [again] = plan(engine, storage, ci_conf(second_job, source_item(PARK_PATH, content, "blob-park")))
    assert again["entry"]["digest"] == argument["entry"]["digest"]
    reused = process(engine, storage, again, scratch, child_env, task=ti(second_job))
    assert http_server.hits[route] == 1
    assert reused["run_id"] != run_id
    assert (reused["copy_of"], reused["status"], reused["message"]) == (run_id, True, db_runs.OK_MESSAGE)
    assert (reused["address_count"], reused["seconds"]) == (features, 0.0)
    copy = db_runs.get_run(engine, reused["run_id"])
    assert copy is not None
    assert (copy["job_id"], copy["state"], copy["airflow_ti"]) == (second_job, state, ti(second_job).ti)
    assert published(storage, reused["run_id"]) == []  # the copy points at the original's files
    job = db_jobs.get_job(engine, second_job)
    assert job is not None
    assert job["status"] is True
    assert job["file_results"][PARK_PATH]["entries"][0]["reused_run"] == run_id

    # A re-run request processes again.
    third_job = f"job-{uid}-3"
    [rerun] = plan(
        engine, storage, ci_conf(third_job, source_item(PARK_PATH, content, "blob-park"), rerun=True)
    )
    assert rerun["run_owner"]["rerun"] is True
    fresh = process(engine, storage, rerun, scratch, child_env, task=ti(third_job))
    assert http_server.hits[route] == 2
    assert (fresh["copy_of"], fresh["status"], fresh["address_count"]) == (None, True, features)
    assert fresh["run_id"] not in (run_id, reused["run_id"])
    assert "us/wy/park.zip" in published(storage, fresh["run_id"])
    assert db_jobs.get_job(engine, third_job)["is_rerun"] is True  # type: ignore[index]


@pytest.mark.integration
def test_a_missing_download_is_a_recorded_source_failure(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    route = f"/machine/{uid}/gone.zip"  # no such route: 404
    url = http_server.url(route)
    job_id = f"job-{uid}"
    [argument] = plan(
        engine, storage, ci_conf(job_id, source_item(PARK_PATH, json.dumps(park_document(fixtures, url))))
    )

    result = process(engine, storage, argument, scratch, child_env)

    assert http_server.hits[route] >= 1
    assert (result["status"], result["message"], result["source_problem"]) == (
        False,
        CACHE_FAILED,
        DOWNLOAD_FAILED,
    )
    assert result["copy_of"] is None
    run = db_runs.get_run(engine, result["run_id"])
    assert run is not None
    state = run["state"]
    assert (state["cache"], state["sample"], state["processed"]) == (None, None, None)
    assert state["source problem"] == DOWNLOAD_FAILED
    assert state["process hash"] is None
    base = f"runs/{result['run_id']}"
    assert published(storage, result["run_id"]) == ["index.json", "index.txt", "output.txt"]
    assert state["output"] == storage.url(f"{base}/output.txt")
    log = storage.get_bytes(f"{base}/output.txt").decode("utf-8")
    assert url in log
    assert DOWNLOAD_FAILED in log
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert (job["status"], job["file_states"]) == (False, {PARK_PATH: False})
    assert job["file_results"][PARK_PATH]["message"] == CACHE_FAILED
    assert list(scratch.iterdir()) == []


@pytest.mark.integration
def test_fixing_an_invalid_file_processes_its_unchanged_entries(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    park = park_document(fixtures, "")
    route = f"/machine/{uid}/gone.zip"
    document = {
        "schema": 2,
        "coverage": park["coverage"],
        "layers": {
            "addresses": [
                {
                    "name": "county",
                    "data": http_server.url(route),
                    "protocol": "http",
                    "conform": park["conform"],
                }
            ],
            "parcels": [
                {
                    "name": "county",
                    "data": http_server.url(f"/machine/{uid}/parcels.zip"),
                    "protocol": "carrier-pigeon",  # the mistake of the first push
                    "conform": {"format": "shapefile", "pid": "PID"},
                }
            ],
        },
    }
    path = "sources/us/wy/park_county.json"
    assert plan(engine, storage, ci_conf(f"job-{uid}-1", source_item(path, json.dumps(document)))) == []
    document["layers"]["parcels"][0]["protocol"] = "http"  # fixed; the address entry is unchanged
    planned = plan(engine, storage, ci_conf(f"job-{uid}-2", source_item(path, json.dumps(document))))
    assert [p["entry"]["label"] for p in planned] == [
        "us/wy/park_county/addresses/county",
        "us/wy/park_county/parcels/county",
    ]

    result = process(engine, storage, planned[0], scratch, child_env)

    assert (result["copy_of"], result["source_problem"]) == (None, DOWNLOAD_FAILED)
    assert http_server.hits[route] >= 1


# -- deadlines and memory -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_hung_child_is_killed_and_recorded_as_timed_out(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    monkeypatch: pytest.MonkeyPatch,
    uid: str,
) -> None:
    monkeypatch.setattr(machine.child, "KILL_GRACE_SECONDS", 1.0)
    route = f"/machine/{uid}/hang.zip"
    url = http_server.add_hanging(route)
    job_id = f"job-{uid}"
    [argument] = plan(
        engine, storage, ci_conf(job_id, source_item(PARK_PATH, json.dumps(park_document(fixtures, url))))
    )
    env = {**child_env, "OPENADDR_READ_TIMEOUT": "60"}  # the child waits; only the deadline ends it

    started = time.monotonic()
    result = process(
        engine, storage, argument, scratch, env, entry={**argument["entry"], "timeout": 2.0}, task=ti(job_id)
    )
    elapsed = time.monotonic() - started

    assert 3.0 <= elapsed < 20
    assert http_server.hits[route] == 1
    assert (result["status"], result["message"], result["source_problem"]) == (
        False,
        "Timed out after 0:00:02",
        None,
    )
    run = db_runs.get_run(engine, result["run_id"])
    assert run is not None
    assert (run["state"], run["status"], run["address_count"]) == (None, False, None)
    # The child's log is the run's output.
    assert published(storage, result["run_id"]) == ["output.txt"]
    log = storage.get_bytes(f"runs/{result['run_id']}/output.txt").decode("utf-8")
    assert f"Downloading {url}" in log
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert (job["status"], job["file_results"][PARK_PATH]["message"]) == (False, "Timed out after 0:00:02")
    assert list(scratch.iterdir()) == []


@SQLITE_ONLY
@pytest.mark.integration
def test_a_killed_child_leaves_no_work_folder_behind(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uid: str,
) -> None:
    monkeypatch.setattr(machine.child, "KILL_GRACE_SECONDS", 1.0)
    route = f"/machine/{uid}/hang.zip"
    url = http_server.add_hanging(route)
    [argument] = plan(
        engine,
        storage,
        ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(park_document(fixtures, url)))),
    )
    env = {**child_env, "OPENADDR_READ_TIMEOUT": "60"}

    result = process(engine, storage, argument, scratch, env, entry={**argument["entry"], "timeout": 2.0})

    assert result["message"] == "Timed out after 0:00:02"
    assert http_server.hits[route] == 1  # killed while downloading into its work folder
    assert list(scratch.iterdir()) == []
    assert list((tmp_path / "child-tmp").iterdir()) == []


@SQLITE_ONLY
@pytest.mark.integration
def test_the_entrys_own_deadline_ends_the_child_first(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    """A source's ``timeout`` (hours) is the child's deadline too: the child stops itself there, a download failure
    whose log says "Timed out after …" (processing.md §13), long before the parent's kill (60 s after it); the run
    is recorded as timed out (machine-ci.md §5), its log kept."""
    url = http_server.add_hanging(f"/machine/{uid}/hang.zip")
    document = park_document(fixtures, url, timeout=0.0003)  # about a second; v1: schema lines are warnings
    [argument] = plan(engine, storage, ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(document))))
    assert argument["entry"]["timeout"] == pytest.approx(1.08)
    env = {**child_env, "OPENADDR_READ_TIMEOUT": "60"}

    started = time.monotonic()
    result = process(engine, storage, argument, scratch, env)

    assert time.monotonic() - started < 30
    assert (result["status"], result["message"], result["source_problem"]) == (
        False,
        "Timed out after 0:00:01",
        None,
    )
    assert db_runs.get_run(engine, result["run_id"])["state"] is None
    log = storage.get_bytes(f"runs/{result['run_id']}/output.txt").decode("utf-8")
    assert re.search(r"WARNING: Could not download source data: Timed out after \d+:\d\d:\d\d", log), log
    assert "index.json" in published(storage, result["run_id"])


@SQLITE_ONLY
@pytest.mark.integration
def test_a_tiny_memory_limit_ends_as_out_of_memory(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    """16 MiB of address space: the interpreter starts, and its first imports raise MemoryError."""
    route, url = serve_park(http_server, fixtures, uid)
    [argument] = plan(
        engine,
        storage,
        ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(park_document(fixtures, url)))),
    )
    env = {**child_env, machine.MEMORY_LIMIT_VARIABLE: str(16 * 2**20)}

    result = machine.process_source(
        engine,
        storage,
        argument["entry"],
        machine.RunOwner(**argument["run_owner"]),
        scratch=scratch,
        env=env,
        limit=machine.memory_limit(env),
    )

    assert (result["status"], result["message"]) == (False, "Ran out of memory (limit 16 MiB)")
    assert http_server.hits[route] == 0
    run = db_runs.get_run(engine, result["run_id"])
    assert run is not None
    assert (run["state"], run["source_problem"]) == (None, None)
    assert published(storage, result["run_id"]) == ["output.txt"]
    assert "MemoryError" in storage.get_bytes(f"runs/{result['run_id']}/output.txt").decode("utf-8")


def test_a_large_entry_runs_under_the_large_tier_limit(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route, url = serve_park(http_server, fixtures, uid)
    document = park_document(fixtures, url)
    document["conform"]["size"] = "large"
    [argument] = plan(engine, storage, ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(document))))
    assert argument["entry"]["size"] == "large"
    # Only the large tier's setting applies: 16 MiB, so the child cannot even start.
    monkeypatch.delenv(machine.MEMORY_LIMIT_VARIABLE, raising=False)
    monkeypatch.setenv(machine.LARGE_MEMORY_LIMIT_VARIABLE, str(16 * 2**20))

    result = process(engine, storage, argument, scratch, child_env)

    assert (result["status"], result["message"]) == (False, "Ran out of memory (limit 16 MiB)")
    assert http_server.hits[route] == 0


@pytest.mark.parametrize("event", ["pull_request", "issue_comment"])
def test_a_pull_request_gets_the_standard_limit_whatever_size_it_claims(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
    event: str,
) -> None:
    route, url = serve_park(http_server, fixtures, uid)
    document = park_document(fixtures, url)
    document["conform"]["size"] = "large"
    [argument] = plan(
        engine,
        storage,
        ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(document)), event=event),
    )
    # Planned on the standard tier, its owner marked as a pull request's.
    assert argument["entry"]["size"] == "standard"
    assert argument["run_owner"]["pull_request"] is True
    # The standard limit applies (16 MiB: the child cannot start), not the large tier's (none).
    monkeypatch.setenv(machine.MEMORY_LIMIT_VARIABLE, str(16 * 2**20))
    monkeypatch.setenv(machine.LARGE_MEMORY_LIMIT_VARIABLE, "0")
    # Even for an entry that reached the task claiming the large tier.
    claimed = {**argument, "entry": {**argument["entry"], "size": "large"}}

    result = process(engine, storage, claimed, scratch, child_env)

    assert (result["status"], result["message"]) == (False, "Ran out of memory (limit 16 MiB)")
    assert http_server.hits[route] == 0
    assert list(scratch.iterdir()) == []  # the work folder is gone


def test_a_push_keeps_the_size_its_source_claims(engine: sa.Engine, storage: LocalStorage, uid: str) -> None:
    document = {
        "coverage": {},
        "data": "http://example.test/a.zip",
        "protocol": "http",
        "conform": {"format": "csv", "size": "large", "number": "n", "street": "s", "lon": "x", "lat": "y"},
    }
    [argument] = plan(
        engine, storage, ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(document)), event="push")
    )
    assert (argument["entry"]["size"], argument["run_owner"]["pull_request"]) == ("large", False)


@pytest.mark.integration
def test_a_group_is_processed_entry_by_entry_and_a_retry_keeps_what_was_done(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    route, url = serve_park(http_server, fixtures, uid)
    missing = http_server.add(f"/machine/{uid}/missing.zip", b"gone", status=404)
    set_id = db_jobs.create_set(engine, owner=f"oa-{uid}", repository="openaddresses", commit_sha=None)
    owner = machine.RunOwner("batch", set_id=set_id)
    files = [
        machine.SourceSnapshot(PARK_PATH, "blob-park", json.dumps(park_document(fixtures, url)).encode()),
        machine.SourceSnapshot(
            "sources/us/wy/gone.json", "blob-gone", json.dumps(park_document(fixtures, missing)).encode()
        ),
    ]
    entries = [
        e.to_dict() for e in machine.plan_sources(engine, storage, files, prefix="sets/x", owner=owner)
    ]
    task = db_runs.AirflowTask("openaddr_batch", f"batch-{uid}", "process_source", 7, 1)

    first = machine.process_entries(
        engine, storage, entries, owner, scratch=scratch, task=task, env=child_env
    )

    assert [(r["label"], r["status"]) for r in first] == [
        (PARK_LABEL, True),
        ("us/wy/gone/addresses/primary", False),
    ]
    runs = db_runs.task_runs(engine, task)
    assert [(run["id"], run["airflow_slot"], run["airflow_ti"]) for run in runs] == [
        (first[0]["run_id"], 0, f"openaddr_batch/batch-{uid}/process_source/7"),
        (first[1]["run_id"], 1, f"openaddr_batch/batch-{uid}/process_source/7"),
    ]
    assert http_server.hits[route] == 1

    # A retried attempt keeps the finished runs: nothing is downloaded again.
    again = machine.process_entries(
        engine,
        storage,
        entries,
        owner,
        scratch=scratch,
        task=dataclasses.replace(task, try_number=2),
        env=child_env,
    )
    assert [(r["run_id"], r["status"]) for r in again] == [(r["run_id"], r["status"]) for r in first]
    assert http_server.hits[route] == 1
    assert len(db_runs.set_runs(engine, set_id)) == 2


def test_a_failed_group_accounts_for_every_entry(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    raw, _ = read_corpus(corpus_sources, MULTI_LAYER[0])
    set_id = db_jobs.create_set(engine, owner=f"oa-{uid}", repository="openaddresses", commit_sha=None)
    owner = machine.RunOwner("batch", set_id=set_id)
    snapshot = machine.SourceSnapshot(f"sources/{MULTI_LAYER[0]}", "blob", raw)
    entries = machine.plan_sources(engine, storage, [snapshot], prefix="sets/y", owner=owner)
    assert len(entries) == 4
    task = db_runs.AirflowTask("openaddr_batch", f"batch-{uid}", "process_source", 3, 2)
    started = db_runs.utcnow() - dt.timedelta(minutes=5)

    def reserve(slot: int) -> int:
        entry = entries[slot]
        return db_runs.insert_run(
            engine,
            source_path=entry.path,
            source_layer=entry.layer,
            layer_name=entry.name,
            set_id=set_id,
            task=dataclasses.replace(task, slot=slot),
            started=started,
        )

    # Slot 0 finished, slot 1 was running when the task failed for good, slots 2 and 3 never started.
    done = reserve(0)
    assert db_runs.finish_run(engine, done, state=state_of(**GOOD), attempt_started=started, try_number=2)
    reserve(1)

    runs = machine.record_task_failure(
        engine, task, final=True, entries=[e.to_dict() for e in entries], owner=owner
    )

    assert [(run["airflow_slot"], run["layer_name"], run["status"], run["message"]) for run in runs] == [
        (0, entries[0].name, True, db_runs.OK_MESSAGE),
        (1, entries[1].name, False, db_runs.CRASH_MESSAGE),
        (2, entries[2].name, False, db_runs.CRASH_MESSAGE),
        (3, entries[3].name, False, db_runs.CRASH_MESSAGE),
    ]
    assert {run["source_layer"] for run in runs[2:]} == {entries[2].layer, entries[3].layer}
    assert len(db_runs.set_runs(engine, set_id)) == 4


@pytest.mark.integration
def test_a_try_that_raised_is_named_by_the_next_one(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An infrastructure error (storage down at publishing) marks the pending run; the retry logs what became of
    the previous try and records the run (issue 16; a try lost with its worker leaves no mark:
    tests/test_faults_worker.py)."""
    _, url = serve_park(http_server, fixtures, uid)
    set_id = db_jobs.create_set(engine, owner=f"oa-{uid}", repository="openaddresses", commit_sha=None)
    owner = machine.RunOwner("batch", set_id=set_id)
    snapshot = machine.SourceSnapshot(
        PARK_PATH, "blob-park", json.dumps(park_document(fixtures, url)).encode()
    )
    entries = [
        e.to_dict() for e in machine.plan_sources(engine, storage, [snapshot], prefix="sets/z", owner=owner)
    ]
    task = db_runs.AirflowTask("openaddr_batch", f"batch-{uid}", "process_source", 0, 1)

    class StorageDown(LocalStorage):
        def publish_run(self, *args: Any, **kwargs: Any) -> dict[str, str]:
            raise OSError("storage down")

    down = StorageDown(storage.root)
    with pytest.raises(OSError, match="storage down"):
        machine.process_entries(engine, down, entries, owner, scratch=scratch, task=task, env=child_env)
    (pending,) = db_runs.task_runs(engine, task)
    assert (pending["status"], pending["message"]) == (None, "Try 1 failed: OSError: storage down")

    with caplog.at_level("WARNING", logger="openaddr.machine.recording"):
        (result,) = machine.process_entries(
            engine,
            storage,
            entries,
            owner,
            scratch=scratch,
            task=dataclasses.replace(task, try_number=2),
            env=child_env,
        )
    host = pending["worker_id"].rpartition("/")[0]
    assert f"previous try 1 of run {pending['id']} failed on {host}: OSError: storage down" in caplog.text
    assert (result["run_id"], result["status"]) == (pending["id"], True)


@SQLITE_ONLY
@pytest.mark.integration
@pytest.mark.parametrize("mib", [64, 350])
def test_a_memory_limit_breach_is_named_as_such(
    mib: int,
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    _, url = serve_park(http_server, fixtures, uid)
    [argument] = plan(
        engine,
        storage,
        ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(park_document(fixtures, url)))),
    )

    result = process(engine, storage, argument, scratch, child_env, limit=mib * 2**20)

    assert (result["status"], result["message"]) == (False, f"Ran out of memory (limit {mib} MiB)")


def test_memory_limit_setting() -> None:
    assert machine.memory_limit({}) == 16 * 2**30
    assert machine.memory_limit({machine.MEMORY_LIMIT_VARIABLE: " 536870912 "}) == 512 * 2**20
    assert machine.memory_limit({machine.MEMORY_LIMIT_VARIABLE: "0"}) is None
    # The large tier has its own limit, set apart from the standard one.
    assert machine.memory_limit({machine.MEMORY_LIMIT_VARIABLE: "536870912"}, size="large") == 64 * 2**30
    assert machine.memory_limit({machine.LARGE_MEMORY_LIMIT_VARIABLE: "1073741824"}, size="large") == 2**30
    assert machine.memory_limit({machine.LARGE_MEMORY_LIMIT_VARIABLE: "0"}, size="large") is None
    assert [machine.format_bytes(n) for n in (16 * 2**30, 512 * 2**20, 1536, 100)] == [
        "16 GiB",
        "512 MiB",
        "1.5 KiB",
        "100 B",
    ]


# -- failures the listener records --------------------------------------------------------------------------------


def test_record_task_failure(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    raw, _ = read_corpus(corpus_sources, MULTI_LAYER[0])
    path = f"sources/{MULTI_LAYER[0]}"
    job_id = f"job-{uid}"
    planned = plan(engine, storage, ci_conf(job_id, source_item(path, raw)))
    assert len(planned) == 4
    started = db_runs.utcnow() - dt.timedelta(minutes=30)

    def reserve(index: int, try_number: int = 1, at: dt.datetime = started) -> int:
        """What ``process_source`` does before it starts the subprocess."""
        entry = planned[index]["entry"]
        return db_runs.insert_run(
            engine,
            source_path=entry["path"],
            source_layer=entry["layer"],
            layer_name=entry["name"],
            layer_digest=entry["digest"],
            job_id=job_id,
            task=ti(job_id, index, try_number),
            started=at,
        )

    run_ids = [reserve(index) for index in range(4)]

    # A final failure: the subprocess (or the task) crashed.
    [crashed] = machine.record_task_failure(engine, ti(job_id, 0))
    assert (crashed["id"], crashed["status"], crashed["message"], crashed["state"]) == (
        run_ids[0],
        False,
        db_runs.CRASH_MESSAGE,
        None,
    )

    # An attempt that will be retried: pending, then the retry takes the same run over.
    [retried] = machine.record_task_failure(engine, ti(job_id, 1), final=False)
    assert (retried["id"], retried["status"], retried["message"]) == (run_ids[1], None, None)
    assert reserve(1, try_number=2, at=started + dt.timedelta(minutes=10)) == run_ids[1]
    # The first attempt's failure arriving late is dropped: a later attempt has begun.
    [stale] = machine.record_task_failure(engine, ti(job_id, 1, try_number=1))
    assert stale["status"] is None
    [final] = machine.record_task_failure(engine, ti(job_id, 1, try_number=2))
    assert (final["status"], final["message"], final["airflow_try_number"]) == (
        False,
        db_runs.CRASH_MESSAGE,
        2,
    )

    # A timeout: failed with the limit, and a late success of the same attempt never turns it green.
    [timed_out] = machine.record_task_failure(engine, ti(job_id, 2), timeout=dt.timedelta(hours=3))
    assert (timed_out["status"], timed_out["message"], timed_out["state"]) == (
        False,
        "Timed out after 3:00:00",
        None,
    )
    late = db_runs.finish_run(
        engine, run_ids[2], state=state_of(**GOOD), attempt_started=started, try_number=1
    )
    assert late is False
    after = db_runs.get_run(engine, run_ids[2])
    assert after is not None
    assert (after["status"], after["message"], after["state"]) == (False, "Timed out after 3:00:00", None)

    # A failure after the attempt recorded its result (e.g. the job update failed): the result stands.
    assert db_runs.finish_run(
        engine, run_ids[3], state=state_of(**GOOD), attempt_started=started, try_number=1
    )
    [kept] = machine.record_task_failure(engine, ti(job_id, 3))
    assert (kept["status"], kept["message"], kept["address_count"]) == (True, db_runs.OK_MESSAGE, 346)

    assert machine.record_task_failure(engine, ti(job_id, 99)) == []  # no run made
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert (job["status"], job["file_states"]) == (False, {path: False})
    assert [e["status"] for e in job["file_results"][path]["entries"]] == [False, False, False, True]
    assert job["file_results"][path]["message"] == db_runs.CRASH_MESSAGE


# -- batch sets -----------------------------------------------------------------------------------------------------


def listing_of(owner: str, files: dict[str, bytes]) -> SourceListing:
    return SourceListing(
        owner=owner,
        repository="openaddresses",
        commit_sha=COMMIT,
        files=[SourceFile(path, git_blob_sha(raw), raw) for path, raw in sorted(files.items())],
    )


def test_create_batch_set_records_the_set_and_its_snapshot(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    files = {f"sources/{name}": (corpus_sources / name).read_bytes() for name in MULTI_LAYER}
    listing = listing_of(f"oa-{uid}", files)

    set_id = machine.create_batch_set(engine, storage, listing, dag_run_id=f"batch__{uid}")

    row = db_jobs.get_set(engine, set_id)
    assert row is not None
    assert (row["owner"], row["repository"], row["commit_sha"]) == (f"oa-{uid}", "openaddresses", COMMIT)
    assert (row["airflow_dag_run_id"], row["datetime_end"]) == (f"batch__{uid}", None)
    assert abs(db_runs.utcnow() - row["datetime_start"]) < dt.timedelta(minutes=1)
    for path, raw in files.items():
        assert storage.get_bytes(f"sets/{set_id}/sources/{path.removeprefix('sources/')}") == raw
    manifest = json.loads(storage.get_bytes(f"sets/{set_id}/sources.json"))
    assert manifest == {path: git_blob_sha(raw) for path, raw in files.items()}
    # A retried task finds its set.
    assert machine.create_batch_set(engine, storage, listing, dag_run_id=f"batch__{uid}") == set_id


def test_group_entries_packs_small_entries_up_to_a_size_and_a_time_budget() -> None:
    owner = {"kind": "batch", "set_id": 1}

    def argument(path: str, size: str = "standard") -> dict[str, Any]:
        return {"entry": {"path": path, "label": path, "size": size}, "run_owner": owner}

    times = {f"p{i}": 10.0 for i in range(30)} | {"slow": 61.0, "large": 1.0, "almost": 59.0}
    arguments = [
        argument("new"),  # no previous time: alone
        argument("slow"),  # a minute or more: alone
        *(argument(f"p{i}") for i in range(12)),  # 12 × 10 s: 10, then 2
        argument("large", "large"),  # never grouped
        *(argument(f"p{i}") for i in range(12, 15)),
        argument("almost"),  # 3 × 10 + 59 = 89 s: fits the default budget
    ]

    groups = machine.group_entries(arguments, times, size=10)

    assert [[entry["path"] for entry in group["entries"]] for group in groups] == [
        ["new"],
        ["slow"],
        [f"p{i}" for i in range(10)],
        ["p10", "p11"],
        ["large"],
        ["p12", "p13", "p14", "almost"],
    ]
    assert all(group["run_owner"] == owner for group in groups)
    # The time budget closes a group before the size does: each entry costs its time and the task's overhead.
    budgeted = machine.group_entries([argument(f"p{i}") for i in range(6)], times, budget=25.0)
    assert 2 * (10.0 + machine.ENTRY_OVERHEAD_SECONDS) <= 25.0 < 3 * 10.0
    assert [len(group["entries"]) for group in budgeted] == [2, 2, 2]
    assert machine.group_entries([], times) == []


def test_group_entries_makes_enough_tasks_for_the_worker_slots() -> None:
    """1,000 small entries of 0.1 s (the second night of ``make bench-batch``): 0.5 s of cost each, 500 s in all.
    Two slots: four tasks a slot at least, so the budget falls to 500 / 8 = 62.5 s (125 entries), under the size
    of 100; sixteen slots: 500 / 64 is under the floor of MIN_GROUP_SECONDS (60 entries a task)."""
    owner = {"kind": "batch", "set_id": 1}
    arguments = [{"entry": {"path": f"p{i}", "label": f"p{i}"}, "run_owner": owner} for i in range(1000)]
    times = {f"p{i}": 0.1 for i in range(1000)}
    assert machine.ENTRY_OVERHEAD_SECONDS == 0.4  # the cost of each entry below: 0.5 s

    def sizes(**kwargs: Any) -> list[int]:
        return [len(group["entries"]) for group in machine.group_entries(arguments, times, **kwargs)]

    assert sizes() == [machine.GROUP_SIZE] * 10  # no slots given: the budget (300 s) is not reached
    assert sizes(slots=2) == [100] * 10
    assert sizes(slots=2, size=1000) == [125] * 8  # 62.5 s a task: four tasks for each of the two slots
    assert sizes(slots=16) == [60] * 16 + [40]  # MIN_GROUP_SECONDS (30 s) a task
    # Every entry is in exactly one task, in the order given, each group with its deadline.
    groups = machine.group_entries(arguments, times, slots=16)
    assert [entry["path"] for group in groups for entry in group["entries"]] == [f"p{i}" for i in range(1000)]
    assert all(group["group_deadline"] == machine.GROUP_DEADLINE_SECONDS for group in groups)
    # Entries that are not small (no time, a minute or more) never count towards the budget.
    slow = [{"entry": {"path": "slow", "label": "slow"}, "run_owner": owner}, *arguments[:10]]
    assert [
        len(group["entries"]) for group in machine.group_entries(slow, {**times, "slow": 3600.0}, slots=2)
    ] == [1, 10]


def test_plan_batch_set_puts_the_slowest_sources_first(
    engine: sa.Engine, storage: LocalStorage, corpus_sources: Path, uid: str
) -> None:
    owner = f"oa-{uid}"
    names = [*MULTI_LAYER, "ca/nb/province.json"]
    files = {f"sources/{name}": (corpus_sources / name).read_bytes() for name in names}
    files["sources/zz/broken.json"] = b"{ not json"
    perrysburg, mississauga, tshwane = (f"sources/{name}" for name in MULTI_LAYER)

    # The previous completed set of the same repository: its runs' cache + process times, per path.
    previous = db_jobs.create_set(
        engine,
        owner=owner,
        repository="openaddresses",
        commit_sha=None,
        now=db_runs.utcnow() - dt.timedelta(days=7),
    )
    times = [
        (perrysburg, "addresses", "city", "0:00:05", "0:00:05"),
        (perrysburg, "addresses", "city-2", "0:00:03", "0:00:02"),  # entries add up: 15 s
        (mississauga, "parcels", "city", "0:01:00", "0:00:40"),  # 100 s
        (tshwane, "addresses", "city", "0:00:30", "0:00:20"),  # 50 s
    ]
    for path, layer, name, cache_time, process_time in times:
        db_runs.insert_run(
            engine,
            source_path=path,
            source_layer=layer,
            layer_name=name,
            set_id=previous,
            state=state_of(**{**GOOD, "cache time": cache_time, "process time": process_time}),
            now=db_runs.utcnow() - dt.timedelta(days=6, hours=12),
        )
    db_jobs.complete_set(engine, previous, now=db_runs.utcnow() - dt.timedelta(days=6))
    set_id = machine.create_batch_set(engine, storage, listing_of(owner, files), dag_run_id=None)

    planned = machine.plan_batch_set(engine, storage, set_id)

    # Paths without a previous time first (alphabetically; the broken one has no entries), then the slowest.
    order = ["sources/ca/nb/province.json", mississauga, tshwane, perrysburg]
    expected = [
        entry
        for path in order
        for entry in expected_entries(
            path, json.loads(files[path]), prefix=f"sets/{set_id}/sources", blob_sha=git_blob_sha(files[path])
        )
    ]
    owner_args = {
        "kind": "batch",
        "job_id": None,
        "set_id": set_id,
        "commit_sha": COMMIT,
        "rerun": False,
        "pull_request": False,
    }
    assert planned == [{"entry": entry, "run_owner": owner_args} for entry in expected]

    # The tasks: entries without a previous time and slow ones (Mississauga, 100 s) alone; the small ones (Tshwane
    # 50 s, Perrysburg 15 s: 7 entries, 3 × 50 + 4 × 15 = 210 s of previous time) share one task.
    tasks = machine.batch_task_groups(engine, set_id, planned)
    assert tasks["large"] == []
    small = [entry for entry in expected if entry["path"] in (tshwane, perrysburg)]
    assert len(small) == 7
    alone = [entry for entry in expected if entry["path"] not in (tshwane, perrysburg)]
    assert tasks["standard"] == [
        *({"entries": [entry], "run_owner": owner_args} for entry in alone),
        {"entries": small, "run_owner": owner_args, "group_deadline": machine.GROUP_DEADLINE_SECONDS},
    ]
    [broken] = db_runs.set_runs(engine, set_id)
    assert (broken["source_path"], broken["status"], broken["source_problem"]) == (
        "sources/zz/broken.json",
        False,
        INVALID,
    )
    assert (broken["is_merged"], broken["commit_sha"], broken["job_id"]) == (True, COMMIT, None)


def test_the_first_night_groups_entries_by_their_estimate(
    engine: sa.Engine,
    storage: LocalStorage,
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
    allow_private_urls: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No previous set: small files (``Content-Length`` of a HEAD) share a task; a large one (500 MB: about 500 s
    by the estimate) and an FTP one (unknown: nothing to ask) keep a task each; nothing is downloaded."""
    route, url = serve_park(http_server, fixtures, uid)
    big = f"/machine/{uid}/big.zip"
    http_server.add_route(big, lambda handler, query: send(handler, b"", content_length=500_000_000))
    documents = {
        **{f"sources/us/wy/small{i}.json": park_document(fixtures, url) for i in range(3)},
        "sources/us/wy/big.json": park_document(fixtures, http_server.url(big)),
        "sources/us/wy/ftp.json": park_document(fixtures, "ftp://127.0.0.1/park.zip", protocol="ftp"),
    }
    files = {path: json.dumps(document).encode() for path, document in documents.items()}
    set_id = machine.create_batch_set(engine, storage, listing_of(f"oa-{uid}", files), dag_run_id=None)
    planned = machine.plan_batch_set(engine, storage, set_id)

    with caplog.at_level("INFO", logger="openaddr.machine.estimate"):
        tasks = machine.batch_task_groups(engine, set_id, planned, storage=storage)

    def paths(task: dict[str, Any]) -> list[str]:
        return [entry["path"] for entry in task["entries"]]

    assert [paths(task) for task in tasks["standard"]] == [
        ["sources/us/wy/ftp.json"],
        ["sources/us/wy/big.json"],
        [f"sources/us/wy/small{i}.json" for i in range(3)],
    ]
    assert tasks["standard"][2]["group_deadline"] == machine.GROUP_DEADLINE_SECONDS
    assert "group_deadline" not in tasks["standard"][0]
    assert "us/wy/ftp/addresses/primary: unknown cost (nothing to ask before downloading" in caplog.text
    # HEAD requests only: three for the shared small file, one for the big one.
    assert [r.path for r in http_server.requests if r.path.startswith(f"/machine/{uid}/")].count(route) == 3
    assert http_server.hits[big] == 1
    # Without storage (no estimates), the first night keeps a task per entry, as before.
    assert [
        len(task["entries"]) for task in machine.batch_task_groups(engine, set_id, planned)["standard"]
    ] == [1] * 5


@pytest.mark.integration
def test_a_group_past_its_deadline_releases_the_entries_it_has_not_started(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    route, url = serve_park(http_server, fixtures, uid)
    set_id = db_jobs.create_set(engine, owner=f"oa-{uid}", repository="openaddresses", commit_sha=None)
    owner = machine.RunOwner("batch", set_id=set_id)
    files = [
        machine.SourceSnapshot(
            f"sources/us/wy/p{i}.json", f"blob-{i}", json.dumps(park_document(fixtures, url)).encode()
        )
        for i in range(3)
    ]
    entries = [
        e.to_dict() for e in machine.plan_sources(engine, storage, files, prefix="sets/r", owner=owner)
    ]
    task = db_runs.AirflowTask("openaddr_batch", f"batch-{uid}", "process_source", 2, 1)

    # A deadline of 0 s: passed as soon as the first entry has run.
    results = machine.process_entries(
        engine, storage, entries, owner, scratch=scratch, task=task, env=child_env, group_deadline=0.0
    )

    assert results[0]["status"] is True
    assert results[1:] == [{"label": e["label"], "released": True, "entry": e} for e in entries[1:]]
    assert http_server.hits[route] == 1
    # Only the first entry has a run: the released ones get theirs in their own tasks.
    assert [run["source_path"] for run in db_runs.set_runs(engine, set_id)] == ["sources/us/wy/p0.json"]


@pytest.mark.integration
def test_a_batch_reuses_recent_successes_only_and_counts_its_runs(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    ok_route, ok_url = serve_park(http_server, fixtures, uid)
    gone_route = f"/machine/{uid}/gone.zip"
    files = {
        PARK_PATH: json.dumps(park_document(fixtures, ok_url)).encode(),
        "sources/us/wy/gone.json": json.dumps(park_document(fixtures, http_server.url(gone_route))).encode(),
        "sources/zz/broken.json": b"[1, 2",
    }
    set_id = machine.create_batch_set(engine, storage, listing_of(f"oa-{uid}", files), dag_run_id=None)
    gone, park = machine.plan_batch_set(engine, storage, set_id)  # no previous set: alphabetical
    assert (gone["entry"]["path"], park["entry"]["path"]) == ("sources/us/wy/gone.json", PARK_PATH)

    # Yesterday: the park entry succeeded, the other one failed (both runs of a CI job, say).
    yesterday = db_runs.utcnow() - dt.timedelta(days=1)
    earlier = {}
    for argument, values in ((park, GOOD), (gone, BAD)):
        entry = argument["entry"]
        earlier[entry["path"]] = db_runs.insert_run(
            engine,
            source_path=entry["path"],
            source_layer=entry["layer"],
            layer_name=entry["name"],
            layer_digest=entry["digest"],
            state=state_of(**values),
            now=yesterday,
        )

    copied = process(engine, storage, park, scratch, child_env)
    retried = process(engine, storage, gone, scratch, child_env)

    assert (copied["copy_of"], copied["status"], copied["message"]) == (
        earlier[PARK_PATH],
        True,
        db_runs.OK_MESSAGE,
    )
    assert http_server.hits[ok_route] == 0
    assert retried["copy_of"] is None  # a failure is processed again
    assert http_server.hits[gone_route] >= 1
    assert (retried["status"], retried["message"], retried["source_problem"]) == (
        False,
        CACHE_FAILED,
        DOWNLOAD_FAILED,
    )
    for result in (copied, retried):
        run = db_runs.get_run(engine, result["run_id"])
        assert run is not None
        assert (run["set_id"], run["job_id"], run["commit_sha"], run["is_merged"]) == (
            set_id,
            None,
            COMMIT,
            True,
        )

    counts = machine.complete_batch_set(engine, set_id)

    assert counts == {
        "runs": 3,
        "succeeded": 1,
        "failed": 2,
        "reused": 1,
    }  # the broken file's run is a failure
    row = db_jobs.get_set(engine, set_id)
    assert row is not None
    assert row["datetime_end"] is not None
    assert machine.complete_batch_set(engine, set_id) == counts
    assert db_jobs.get_set(engine, set_id)["datetime_end"] == row["datetime_end"]  # type: ignore[index]
    with pytest.raises(LookupError):
        machine.plan_batch_set(engine, storage, 10**9)


def shrunken_park(fixtures: Path, folder: Path, keep: int) -> bytes:
    """The us-wy-park shapefile with its first ``keep`` features only, zipped as the original is."""
    source = fixtures / "data" / "us-wy-park.zip"
    meta, _, geometry, field_data = pyogrio.raw.read(f"zip://{source}", max_features=keep)
    shapefile = folder / "ParkCountyADDRESS_POINTS_point.shp"
    pyogrio.raw.write(
        shapefile,
        geometry,
        field_data,
        meta["fields"],
        crs=meta["crs"],
        geometry_type=meta["geometry_type"],
        encoding=meta["encoding"],
        driver="ESRI Shapefile",
    )
    archive = folder / "shrunken.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for part in sorted(folder.glob("ParkCountyADDRESS_POINTS_point.*")):
            zipped.write(part, part.name)
    return archive.read_bytes()


def test_a_shrunken_second_run_is_held_by_the_quality_gate(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    tmp_path: Path,
    uid: str,
) -> None:
    """Two real batch runs of the park source, the second on 80 % of its data: the second is recorded held, with a
    warning naming the counts and the first run, and stays out of the latest runs (machine-ci.md §10)."""
    features = pyogrio.read_info(f"zip://{fixtures / 'data' / 'us-wy-park.zip'}")["features"]
    keep = features * 8 // 10
    folder = tmp_path / "shrunken"
    folder.mkdir()
    _, full_url = serve_park(http_server, fixtures, uid)
    small_url = http_server.add(
        f"/machine/{uid}/shrunken.zip", shrunken_park(fixtures, folder, keep), content_type="application/zip"
    )
    path = (
        f"sources/us/wy/park-{uid}.json"  # an entry of this test's own: no other test's run is its baseline
    )

    def run_set(url: str) -> dict[str, Any]:
        files = {path: json.dumps(park_document(fixtures, url)).encode()}
        set_id = machine.create_batch_set(engine, storage, listing_of(f"oa-{uid}", files), dag_run_id=None)
        [argument] = machine.plan_batch_set(engine, storage, set_id)
        run = db_runs.get_run(engine, process(engine, storage, argument, scratch, child_env)["run_id"])
        assert run is not None
        return run

    first = run_set(full_url)
    assert (first["status"], first["address_count"], first["warning"], first["accepted"]) == (
        True,
        features,
        None,
        None,
    )
    # The statistics the gate reads were written with the outputs: every number and street of the park is filled.
    assert first["stats"]["filled"]["number"] > 0
    assert first["stats"]["null_island"] == 0

    second = run_set(small_url)  # another URL, another digest: processed, not reused

    assert second["copy_of"] is None
    assert (second["status"], second["message"], second["address_count"]) == (True, db_runs.OK_MESSAGE, keep)
    drop = f"{100 * (features - keep) / features:.3g}"  # 3 significant digits: 20.2 for 346 → 276
    assert second["warning"] == (
        f"Address count dropped {drop} % ({features:,} → {keep:,}) against run {first['id']}"
    )
    assert second["accepted"] is None
    latest = [run["id"] for run in latest_runs(engine, source_path=path)]
    assert latest == [first["id"]]


# -- the trigger's other readings ---------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_file_whose_layers_cannot_be_read_does_not_stop_the_job(
    engine: sa.Engine, storage: LocalStorage, fixtures: Path, uid: str
) -> None:
    job_id = f"job-{uid}"
    conf = ci_conf(
        job_id,
        source_item(PARK_PATH, json.dumps(park_document(fixtures, "http://127.0.0.1:9/park.zip"))),
        source_item("sources/us/xx/odd.json", '{"coverage": {"country": "us"}, "layers": [1]}'),
    )
    planned = plan(engine, storage, conf)
    assert [p["entry"]["path"] for p in planned] == [PARK_PATH]
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    assert job["file_states"]["sources/us/xx/odd.json"] is not None


def test_ci_owner_reads_the_trigger() -> None:
    assert machine.ci_owner({}, "ci__abc") == machine.RunOwner("ci", job_id="abc")
    assert machine.ci_owner({"job_id": "j", "commit_sha": COMMIT, "rerun": True}, "manual__2025") == (
        machine.RunOwner("ci", job_id="j", commit_sha=COMMIT, rerun=True)
    )
    assert machine.ci_owner({}, "manual__" + "x" * 60).job_id == ("manual__" + "x" * 60)[:40]
    entry = machine.PlannedEntry(PARK_PATH, "addresses", "primary", "k", None, "d" * 40, 60.0)
    assert machine.PlannedEntry.from_dict(entry.to_dict()) == entry
    assert (entry.label, machine.source_name("sources/fr/la-réunion.json")) == (PARK_LABEL, "fr/la-réunion")


@pytest.mark.parametrize(
    ("claimed", "hours"),
    [
        (6, 6.0),
        (1_000_000, 24.0),
        (1e308, 24.0),
        (0, 3.0),
        (-5, 3.0),
        ("nan", 3.0),
        ("inf", 3.0),
        (True, 3.0),
    ],
)
def test_a_source_cannot_set_itself_a_timeout_over_24_hours(
    engine: sa.Engine, storage: LocalStorage, uid: str, claimed: object, hours: float
) -> None:
    document = {
        "coverage": {},
        "data": "http://example.test/a.zip",
        "protocol": "http",
        "timeout": claimed,
        "conform": {"format": "csv", "number": "n", "street": "s", "lon": "x", "lat": "y"},
    }
    [argument] = plan(engine, storage, ci_conf(f"job-{uid}", source_item(PARK_PATH, json.dumps(document))))
    # The task's hard stop (operators.pre_execute) and the child's deadline both follow this figure.
    assert argument["entry"]["timeout"] == hours * 3600.0


@pytest.mark.integration
def test_an_entry_without_conform_records_the_conform_suggested_from_its_data(
    engine: sa.Engine,
    storage: LocalStorage,
    scratch: Path,
    child_env: dict[str, str],
    http_server: LoopbackHTTPServer,
    fixtures: Path,
    uid: str,
) -> None:
    """machine-ci.md §9.1: a "missing conform" run keeps a conform suggested from the data's real fields — in its
    state (for the run page and the PR comment), in its log, and published as ``skeleton.json``."""
    from openaddr.machine.comments import job_comment_body, job_rows
    from openaddr.skeleton import STATE_KEY

    _, url = serve_park(http_server, fixtures, uid)
    document = park_document(fixtures, url)
    del document["conform"]
    job_id = f"job-{uid}"
    [argument] = plan(
        engine, storage, ci_conf(job_id, source_item(PARK_PATH, json.dumps(document), "blob-park"))
    )
    result = process(engine, storage, argument, scratch, child_env, task=ti(job_id))
    assert result["source_problem"] == SourceProblem.missing_conform.value
    run = db_runs.get_run(engine, result["run_id"])
    assert run is not None
    record = run["state"][STATE_KEY]
    assert record["conform"] == {
        "format": "shapefile",
        "number": {"function": "prefixed_number", "field": "DLVRY_ADD"},
        "street": {"function": "postfixed_street", "field": "DLVRY_ADD", "may_contain_units": True},
        "unit": {"function": "postfixed_unit", "field": "DLVRY_ADD"},
        "id": "UID",
    }
    assert (record["valid"], record["fields"], record["field_count"]) == (True, ["UID", "DLVRY_ADD"], 2)
    assert "skeleton.json" in published(storage, result["run_id"])
    assert "Suggested conform for" in storage.get_bytes(f"runs/{result['run_id']}/output.txt").decode()
    # The job's pull-request comment carries it, ready to paste.
    job = db_jobs.get_job(engine, job_id)
    assert job is not None
    body = job_comment_body(job, job_rows(engine, job, base_url=None, airflow_url=None), base_url=None)
    block = body.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block) == record["conform"]
