"""The CI and batch DAGs end to end with ``dag.test()``: real sources over loopback HTTP, the real listener, the
Machine database on SQLite and on PostgreSQL, storage in a folder, GitHub on loopback."""

from __future__ import annotations

import json
import uuid
import zipfile
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.db.jobs import get_job, latest_completed_set
from openaddr.db.runs import job_runs, set_runs

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from tests.airflow_fixtures import Machine
    from tests.github_server import FakeGitHub
    from tests.servers import LoopbackHTTPServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARK = "sources/us-wy-park.json"
PARK_AGAIN = "sources/us-wy-park-again.json"
SAN_FRANCISCO = "sources/us-ca-san_francisco.json"
SKIPPED = "sources/us-ca-oakland-skip.json"
MISSING = "sources/us-ca-berkeley-404.json"
BROKEN = "sources/broken.json"


def fixture_source(fixtures: Path, name: str, url: str) -> bytes:
    """A fixture source with its data URL pointing at the loopback server."""
    document = json.loads((fixtures / "sources" / name).read_text(encoding="utf-8"))
    entry = document["layers"]["addresses"][0] if "layers" in document else document
    entry["data"] = url
    return json.dumps(document, ensure_ascii=False, indent=4).encode()


@pytest.fixture
def sources(fixtures: Path, http_server: LoopbackHTTPServer) -> dict[str, bytes]:
    """Source files as a sources repository holds them, their data served locally."""
    missing = http_server.add(f"/dags/{uuid.uuid4().hex}/missing.zip", b"gone\n", status=404)
    return {
        PARK: fixture_source(fixtures, "us-wy-park.json", http_server.url("/data/us-wy-park.zip")),
        SAN_FRANCISCO: fixture_source(
            fixtures, "us-ca-san_francisco.json", http_server.url("/data/us-ca-san_francisco-excerpt.zip")
        ),
        SKIPPED: fixture_source(
            fixtures, "us-ca-oakland-skip.json", http_server.url("/data/us-ca-oakland-excerpt.zip")
        ),
        MISSING: fixture_source(fixtures, "us-ca-berkeley-404.json", missing),
        BROKEN: b'{"schema": 2, "layers": ',
    }


def park_points(fixtures: Path) -> int:
    """Features with a geometry in the Park County shapefile, read with fiona."""
    import fiona

    with zipfile.ZipFile(fixtures / "data" / "us-wy-park.zip") as archive:
        shp = next(name for name in archive.namelist() if name.lower().endswith(".shp"))
    with fiona.open(f"zip://{fixtures / 'data' / 'us-wy-park.zip'}!{shp}") as layer:
        return sum(1 for feature in layer if feature.geometry is not None)


def ci_conf(job_id: str, files: dict[str, bytes], github: FakeGitHub | None = None, **extra: Any) -> dict:
    conf = {
        "job_id": job_id,
        "commit_sha": "c0ffee" * 6 + "abcd",
        "sources": [
            {"path": path, "blob_sha": f"blob-{i}", "content": content.decode()}
            for i, (path, content) in enumerate(files.items())
        ],
        **extra,
    }
    if github is not None:
        conf["github"] = {
            "status_url": github.status_url("openaddresses", "openaddresses", conf["commit_sha"]),
            "owner": "openaddresses",
            "repository": "openaddresses",
        }
    return conf


def extra_links(dag_run: Any, map_index: int) -> dict[str, Any]:
    """The extra links the worker stored for one ``process_source`` instance (Airflow 3 keeps them as XComs)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id,
                dag_ids=dag_run.dag_id,
                task_ids="process_source",
                map_indexes=map_index,
            )
        ).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows if row.key.startswith("_link_")}


def task_instances(dag_run: Any) -> dict[tuple[str, int], Any]:
    return {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}


def test_ci_job_records_every_file_and_posts_the_failure(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],
    fake_github: FakeGitHub,
    fixtures: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The storage is served over http (the webhook app's /files/ in embedded mode): the UI shows only http links.
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS_PUBLIC_URL", "http://results.test/files")
    files = {path: sources[path] for path in (PARK, MISSING, BROKEN)}
    job_id = str(uuid.uuid4())
    dag_run = machine_dags.dags["openaddr_ci"].test(run_conf=ci_conf(job_id, files, fake_github))

    # Source failures are recorded, not raised: process_source succeeds; finish_job fails the DAG run.
    assert dag_run.state == "failed"
    tis = task_instances(dag_run)
    assert tis[("plan_job", -1)].state == "success"
    processed = {ti.rendered_map_index: ti.state for key, ti in tis.items() if key[0] == "process_source"}
    assert processed == {
        "us-wy-park/addresses/primary": "success",
        "us-ca-berkeley-404/addresses/primary": "success",
    }
    assert tis[("finish_job", -1)].state == "failed"

    job = get_job(machine.engine, job_id)
    assert job["status"] is False
    assert job["file_states"] == {PARK: True, MISSING: False, BROKEN: False}
    runs = {run["source_path"]: run for run in job_runs(machine.engine, job_id)}
    park = runs[PARK]
    assert park["status"] is True
    assert park["message"] == "Everything is fine"
    assert park["address_count"] == park_points(fixtures)
    assert park["airflow_ti"].startswith(f"openaddr_ci/{dag_run.run_id}/process_source/")
    assert runs[MISSING]["status"] is False
    assert runs[MISSING]["source_problem"] == "Could not download source data"
    assert runs[BROKEN]["status"] is False
    assert runs[BROKEN]["source_problem"] == "Source does not match the schema"
    assert runs[BROKEN]["message"].startswith("Invalid source: ")

    # Outputs published under runs/<id>/, the recorded state pointing at them.
    index = machine.storage / "runs" / str(park["id"]) / "index.json"
    keys, values = json.loads(index.read_text())
    state = dict(zip(keys, values, strict=True))
    assert state["processed"].endswith(f"runs/{park['id']}/us-wy-park.zip")
    assert (machine.storage / "runs" / str(park["id"]) / "us-wy-park.zip").is_file()
    assert park["state"]["processed"] == state["processed"]

    # The task instance links to the run's published state and to its page on the results site.
    park_index = next(
        key[1] for key, ti in tis.items() if ti.rendered_map_index == "us-wy-park/addresses/primary"
    )
    links = extra_links(dag_run, park_index)
    assert links["_link_RunOutputsLink"] == f"http://results.test/files/runs/{park['id']}/index.json"
    assert links["_link_ResultsSiteLink"] == f"http://results.test/runs/{park['id']}/"

    # The broken file failed at planning: GitHub saw the failure from the start, with the job URL and the token.
    posted = fake_github.statuses
    assert {status["state"] for status in posted} == {"failure"}
    # Cut to GitHub's 140 characters.
    assert (
        posted[-1]["description"] == f"Failed on {BROKEN}, {MISSING} from {BROKEN}, {MISSING}, {PARK}"[:140]
    )
    assert posted[-1]["target_url"] == f"http://results.test/jobs/{job_id}"
    assert posted[-1]["context"] == "openaddresses/hooked"
    assert all("ci-token" in status["authorization"] for status in posted)


def test_ci_job_success_then_reuse_then_rerun(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],
    fake_github: FakeGitHub,
    http_server: LoopbackHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_RESULTS_PUBLIC_URL", "http://results.test/files")
    dag = machine_dags.dags["openaddr_ci"]
    files = {PARK: sources[PARK]}
    first = str(uuid.uuid4())
    hits = http_server.hits["/data/us-wy-park.zip"]
    assert dag.test(run_conf=ci_conf(first, files, fake_github)).state == "success"
    assert http_server.hits["/data/us-wy-park.zip"] == hits + 1
    assert get_job(machine.engine, first)["status"] is True
    assert fake_github.statuses[0]["state"] == "pending"
    assert fake_github.statuses[0]["description"] == f"Checking {PARK}"
    assert fake_github.statuses[-1]["state"] == "success"
    assert fake_github.statuses[-1]["description"] == f"Succeeded on {PARK}"
    (original,) = job_runs(machine.engine, first)

    # Same entry within 10 days: copied, not downloaded again.
    second = str(uuid.uuid4())
    copied = dag.test(run_conf=ci_conf(second, files))
    assert copied.state == "success"
    (copy,) = job_runs(machine.engine, second)
    assert copy["copy_of"] == original["id"]
    assert copy["state"] == original["state"]
    # Its page is its own; its outputs are the original's (a copy publishes nothing under its own id).
    links = extra_links(copied, 0)
    assert links["_link_ResultsSiteLink"] == f"http://results.test/runs/{copy['id']}/"
    assert links["_link_RunOutputsLink"] == f"http://results.test/files/runs/{original['id']}/index.json"
    assert http_server.hits["/data/us-wy-park.zip"] == hits + 1

    # A re-run request processes again.
    third = str(uuid.uuid4())
    assert dag.test(run_conf=ci_conf(third, files, rerun=True)).state == "success"
    (rerun,) = job_runs(machine.engine, third)
    assert rerun["copy_of"] is None
    assert rerun["status"] is True
    assert http_server.hits["/data/us-wy-park.zip"] == hits + 2


def test_batch_set_processes_every_entry_then_reuses_successes(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_server: LoopbackHTTPServer,
) -> None:
    checkout = tmp_path / "checkout"
    # San Francisco says it is large: it runs as process_large_source (pool oa_large, queue large).
    large = json.loads(sources[SAN_FRANCISCO])
    large["conform"]["size"] = "large"
    files = {**sources, SAN_FRANCISCO: json.dumps(large, indent=4).encode()}
    files[PARK_AGAIN] = sources[PARK]  # a second small source, for night 2's grouping
    for path in (PARK, PARK_AGAIN, SAN_FRANCISCO, SKIPPED, MISSING):
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_bytes(files[path])
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_SOURCES", str(checkout))
    dag = machine_dags.dags["openaddr_batch"]

    dag_run = dag.test()
    assert dag_run.state == "success"
    record = latest_completed_set(machine.engine, "openaddresses", "openaddresses")
    assert record is not None
    assert record["airflow_dag_run_id"] == dag_run.run_id
    runs = {run["source_path"]: run for run in set_runs(machine.engine, record["id"])}
    assert set(runs) == {PARK, PARK_AGAIN, SAN_FRANCISCO, SKIPPED, MISSING}
    assert runs[PARK]["status"] is True
    assert runs[PARK_AGAIN]["status"] is True
    assert runs[SAN_FRANCISCO]["status"] is True
    assert runs[SAN_FRANCISCO]["address_count"] > 0
    assert runs[SKIPPED]["status"] is True  # a skipped source is fine (7.5.5)
    assert runs[SKIPPED]["state"]["skipped"] is True
    assert runs[MISSING]["status"] is False
    states = {
        (ti.task_id, ti.rendered_map_index): ti.state
        for ti in dag_run.get_task_instances()
        if ti.task_id in ("process_source", "process_large_source")
    }
    # No previous set, but estimates: the three small files (HEAD Content-Length) share one task, the 404 one
    # (unknown: HEAD answered 404) keeps its own, the large one its own tier; slowest by estimate first.
    assert states == {
        ("process_source", "us-ca-oakland-skip/addresses/primary + 2 more"): "success",
        ("process_source", "us-ca-berkeley-404/addresses/primary"): "success",
        ("process_large_source", "us-ca-san_francisco/addresses/primary"): "success",
    }
    assert runs[SAN_FRANCISCO]["airflow_ti"].startswith(
        f"openaddr_batch/{dag_run.run_id}/process_large_source/"
    )
    snapshot = json.loads((machine.storage / "sets" / str(record["id"]) / "sources.json").read_text())
    assert set(snapshot) == set(runs)
    # send_set_alerts decided the set's summary; with no alert connection it is recorded as not sent (alerts off).
    from openaddr.db.alerts import latest_alert

    summary = latest_alert(machine.engine)
    assert summary is not None
    assert (summary["kind"], summary["key"], summary["channels"]) == ("set_summary", str(record["id"]), "")

    # The next night: successes of the last 6 days are copied, the failure is tried again.
    hits = http_server.hits["/data/us-wy-park.zip"]
    second = dag.test()
    assert second.state == "success"
    record2 = latest_completed_set(machine.engine, "openaddresses", "openaddresses")
    assert record2["id"] != record["id"]
    again = {run["source_path"]: run for run in set_runs(machine.engine, record2["id"])}
    assert again[PARK]["copy_of"] == runs[PARK]["id"]
    assert again[PARK_AGAIN]["copy_of"] == runs[PARK_AGAIN]["id"]
    # Slowest first: the Park file that took longer on night 1 leads the group.
    first_park = max(
        (PARK, PARK_AGAIN), key=lambda path: runs[path]["cache_seconds"] + runs[path]["process_seconds"]
    )
    first_park = first_park.removeprefix("sources/").removesuffix(".json") + "/addresses/primary"
    assert again[SAN_FRANCISCO]["copy_of"] == runs[SAN_FRANCISCO]["id"]
    assert again[MISSING]["copy_of"] is None
    assert again[MISSING]["status"] is False
    assert http_server.hits["/data/us-wy-park.zip"] == hits
    # Night 1's times are known now: the small entries share one task, each with its own run and slot.
    # Both Park files took well under a minute (read off night 1) and come last, slowest first: one task.
    assert runs[PARK]["process_seconds"] < 60
    assert runs[PARK_AGAIN]["process_seconds"] < 60
    names = {
        ti.rendered_map_index: ti.map_index
        for ti in second.get_task_instances()
        if ti.task_id == "process_source"
    }
    # The skipped source has no previous time (a skipped run has none): estimated (HEAD) at about 2 s, it leads
    # the group; the 404 one stays unknown and alone.
    group = "us-ca-oakland-skip/addresses/primary + 2 more"
    assert set(names) == {"us-ca-berkeley-404/addresses/primary", group}
    slots = {
        path: (again[path]["airflow_map_index"], again[path]["airflow_slot"]) for path in (PARK, PARK_AGAIN)
    }
    second_park = PARK_AGAIN if first_park.startswith("us-wy-park/") else PARK
    assert slots == {
        f"sources/{first_park.removesuffix('/addresses/primary')}.json": (names[group], 1),
        second_park: (names[group], 2),
    }


def test_batch_set_reads_the_sources_from_github_at_one_commit(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_github: FakeGitHub,
) -> None:
    checkout = tmp_path / "repository"
    for path in (PARK, MISSING):
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_bytes(sources[path])
    (checkout / "README.md").write_text("not a source\n")
    sha = "5eed" * 10
    fake_github.add_repository("openaddresses", "openaddresses", checkout, sha)
    monkeypatch.setenv("AIRFLOW_VAR_OPENADDR_SOURCES", "github:openaddresses/openaddresses")

    assert machine_dags.dags["openaddr_batch"].test().state == "success"
    record = latest_completed_set(machine.engine, "openaddresses", "openaddresses")
    assert record["commit_sha"] == sha
    runs = {run["source_path"]: run for run in set_runs(machine.engine, record["id"])}
    assert {path: run["status"] for path, run in runs.items()} == {PARK: True, MISSING: False}
    assert runs[PARK]["commit_sha"] == sha
    # One archive download, not one request per file (machine-ci.md §6).
    assert sum(1 for request in fake_github.requests if "/tarball/" in request.path) == 1


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        pytest.param({}, "sources", id="empty"),
        pytest.param({"sources": []}, "sources", id="no-files"),
        pytest.param(
            {"sources": [{"path": "../etc/passwd.json", "content": "{}"}]}, "does not match", id="path"
        ),
        pytest.param({"sources": [{"path": "sources/a.json"}]}, "sources", id="no-content"),
        pytest.param(
            {"sources": [{"path": "sources/a.json", "content": "{}"}], "rerun": "yes"}, "rerun", id="rerun"
        ),
    ],
)
def test_ci_conf_is_declared_and_a_malformed_one_never_becomes_a_run(
    machine_dags: DagBag, machine: Machine, conf: dict, reason: str
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    dag = machine_dags.dags["openaddr_ci"]
    # The trigger form's template: every key declared, with a schema; the template itself is refused.
    params = dag.params.dump()
    assert set(params) >= {"sources", "job_id", "commit_sha", "rerun", "event", "github"}
    assert dag.params.get_param("sources").schema["items"]["required"] == ["path"]
    with pytest.raises(ParamValidationError, match=reason):
        dag.test(run_conf=conf)
    with pytest.raises(ParamValidationError):
        dag.params.validate()  # the template as shown must be edited


def test_ci_conf_that_cannot_be_planned_fails_the_run_at_once(
    machine_dags: DagBag,
    machine: Machine,
    fake_github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from openaddr.machine import MAX_CI_FILES as LIBRARY_MAX
    from openaddr_airflow.params import MAX_CI_FILES

    assert MAX_CI_FILES == LIBRARY_MAX
    job_id = str(uuid.uuid4())
    conf = {"job_id": job_id, "sources": [{"path": "sources/a.json", "content_b64": "not base64!"}]}
    dag_run = machine_dags.dags["openaddr_ci"].test(run_conf=conf)

    assert dag_run.state == "failed"
    tis = task_instances(dag_run)
    # Failed for good on the first try (the DAG's default is 2 retries): nothing was recorded or posted.
    assert (tis[("plan_job", -1)].state, tis[("plan_job", -1)].try_number) == ("failed", 1)
    assert (tis[("finish_job", -1)].state, tis[("finish_job", -1)].try_number) == ("failed", 1)
    captured = capfd.readouterr()
    logged = caplog.text + captured.out + captured.err  # the task runner logs through structlog
    assert "Cannot plan this trigger: sources/a.json: content_b64 is not base64" in logged
    assert f"job {job_id} was never planned" in logged
    assert "LookupError" not in logged
    assert "does not exist" not in logged
    assert get_job(machine.engine, job_id) is None
    assert fake_github.statuses == []


def test_unset_optional_variables_are_not_asked_of_the_api_server(
    machine_dags: DagBag,
    machine: Machine,
    sources: dict[str, bytes],
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models.variable import Variable
    from airflow.sdk.execution_time.secrets.execution_api import ExecutionAPISecretsBackend

    for key in ("base_url", "gag_github_status", "github_status_context", "cloudwatch_namespace"):
        monkeypatch.delenv(f"AIRFLOW_VAR_OPENADDR_{key.upper()}", raising=False)
    monkeypatch.delenv("OPENADDR_BASE_URL", raising=False)
    asked: list[str] = []
    original = ExecutionAPISecretsBackend.get_variable

    def spy(self: Any, key: str, team_name: str | None = None) -> str | None:
        asked.append(key)
        return original(self, key, team_name)

    monkeypatch.setattr(ExecutionAPISecretsBackend, "get_variable", spy)
    Variable.set("openaddr_github_status_context", "openaddresses/from-the-database")
    try:
        dag_run = machine_dags.dags["openaddr_ci"].test(
            run_conf=ci_conf(str(uuid.uuid4()), {BROKEN: sources[BROKEN]}, fake_github)
        )
    finally:
        Variable.delete("openaddr_github_status_context")

    assert dag_run.state == "failed"  # the broken file failed the job
    # The one variable that exists was read through the Execution API; the unset ones were never asked.
    assert fake_github.statuses[-1]["context"] == "openaddresses/from-the-database"
    assert "openaddr_github_status_context" in asked
    assert not {"openaddr_base_url", "openaddr_gag_github_status"} & set(asked)


def test_collect_publishes_the_latest_set(machine_dags: DagBag, machine: Machine, tmp_path: Path) -> None:
    import datetime as dt

    from openaddr.collect.areas import AREAS
    from openaddr.db.collect import current_zips
    from openaddr.db.jobs import complete_set, create_set
    from openaddr.storage import LocalStorage
    from tests.openaddr.test_collect import ALAMEDA, ALAMEDA_CSV, World

    # Runs recorded and published the way process_source does, in the storage the DAG is configured with.
    world = World(machine.engine, "", LocalStorage(machine.storage), tmp_path)
    set_id = create_set(
        machine.engine, owner="openaddresses", repository="openaddresses", commit_sha="a" * 40
    )
    world.clock = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    world.run("alameda", "sources/us/ca/alameda.json", ALAMEDA, set_id=set_id)
    world.run("sp", "sources/br/sp.json", ALAMEDA, set_id=set_id, share_alike="true")
    complete_set(machine.engine, set_id)

    dag_run = machine_dags.dags["openaddr_collect"].test()
    assert dag_run.state == "success"
    published = sorted(path.name for path in (machine.storage / "collections").iterdir())
    # the address zips, four GeoJSON layer types, four GeoParquet ones and the dedupe's -processed zips (on in the DAG)
    assert len(published) == 180 == len(AREAS) * 2 * 10
    with zipfile.ZipFile(
        machine.storage / "collections" / "openaddr-collected-us_west-processed.zip"
    ) as west:
        assert west.read("us/ca/alameda.csv") == ALAMEDA_CSV  # one source: nothing to dedupe
    with zipfile.ZipFile(machine.storage / "collections" / "openaddr-collected-us_west.zip") as west:
        assert west.read("us/ca/alameda.csv") == ALAMEDA_CSV
    with zipfile.ZipFile(
        machine.storage / "collections" / "openaddr-collected-south_america-sa.zip"
    ) as sa_zip:
        assert "br/sp.csv" in sa_zip.namelist()
    rows = {row["url"].rsplit("/", 1)[1]: row for row in current_zips(machine.engine)}
    assert set(rows) == set(published)
    assert rows["openaddr-collected-global.zip"]["address_count"] == 3
    assert rows["openaddr-collected-global-sa.zip"]["address_count"] == 3
    parquet = rows["openaddr-collected-south_america-sa-addresses.parquet"]
    assert (parquet["format"], parquet["address_count"]) == ("parquet", 3)
    assert not any((tmp_path / "scratch").glob("openaddr-collect-*"))  # the work folder is cleaned up
