"""The per-source, latest, health, sample, robots and headers routes of the results site (machine-ci.md §9.1, §9.2).

The database is filled through the library's own functions (``create_set``, ``create_job``, ``insert_run``,
``finish_run``, ``copy_run``); each successful run publishes, to a :class:`~openaddr.storage.LocalStorage`, the state
directory that ``openaddr process-one`` really made of the us-wy-park fixture (cache, sample, zip, GeoJSON, stats),
with its address count changed where a test needs a trend.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.cli import main
from openaddr.db import upgrade
from openaddr.db.jobs import create_job, create_set
from openaddr.db.results import entry_health, source_timeline
from openaddr.db.runs import AirflowTask, copy_run, finish_run, insert_run, utcnow
from openaddr.storage import LocalStorage
from tests.db_fixtures import BACKENDS, create_database, drop_database
from webhook import create_app
from webhook.db import close_engine, get_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flask import Flask

    from tests.servers import LoopbackHTTPServer

SITE = "http://127.0.0.1:5000"
PARK = "sources/us/wy/park.json"
OAKLAND = "sources/us/ca/oakland.json"
AIRFLOW_UI = "http://airflow.example:8080"
SAMPLE_MARKUP = '<details class="sample" data-sample-url="/runs/{id}/sample.json"><summary>Sample</summary><table></table></details>'


# -- real state directories ------------------------------------------------------------------------------------


def processed_source(fixtures: Path, name: str, into: Path, data_url: str | None = None) -> Path:
    """``openaddr process-one`` of a fixture source (its data at ``data_url``); the state directory it wrote."""
    document = json.loads((fixtures / "sources" / name).read_text(encoding="utf-8"))
    if data_url is not None:
        document["data"] = data_url
    source = into / "sources" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps(document), encoding="utf-8")
    out = into / "out"
    main(["process-one", str(source), "--out", str(out)])
    (state_dir,) = [path.parent for path in out.rglob("index.json")]
    return state_dir


@pytest.fixture(scope="module")
def park_state(
    fixtures: Path, http_server: LoopbackHTTPServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The state directory of a real run of us-wy-park (its data served on loopback)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENADDR_ALLOW_PRIVATE_URLS", "1")  # the loopback server
        state_dir = processed_source(
            fixtures,
            "us-wy-park.json",
            tmp_path_factory.mktemp("park"),
            http_server.url("/data/us-wy-park.zip"),
        )
    names = {path.name for path in state_dir.iterdir()}
    assert {"sample.json", "out.geojson", "stats.json", "cache.zip"} <= names, names
    return state_dir


@pytest.fixture(scope="module")
def skip_state(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of a real run of a source that says to skip."""
    return processed_source(fixtures, "us-ca-oakland-skip.json", tmp_path_factory.mktemp("skip"))


@pytest.fixture(params=BACKENDS)
def own_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.URL]:
    """A migrated database of this test alone: the SQLite copy, or a new PostgreSQL database dropped afterwards
    (the pages list everything in the database, so other tests' rows must not be there)."""
    if request.param == "sqlite":
        path = tmp_path / "machine.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield sa.make_url(f"sqlite:///{path}")
        return
    admin_url: sa.URL = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(admin_url, url)


@pytest.fixture
def site(own_db_url: sa.URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_RESULTS", "OPENADDR_EMBEDDED"):
        monkeypatch.delenv(key, raising=False)
    folder = tmp_path / "storage"
    folder.mkdir()
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": own_db_url.render_as_string(hide_password=False),
            "FILES_FOLDER": str(folder),
            "RESULTS_PUBLIC_URL": f"{SITE}/files",
            "AIRFLOW_UI_URL": AIRFLOW_UI,
        }
    )
    yield app
    close_engine(app)


class Recorder:
    """Records runs of fixture sources the way ``process_source`` does, at given times."""

    def __init__(self, app: Flask, tmp_path: Path, park_state: Path) -> None:
        self.engine = get_engine(app)
        self.storage = LocalStorage(app.config["FILES_FOLDER"], public_url=f"{SITE}/files")
        self.tmp_path = tmp_path
        self.park_state = park_state
        self.base = utcnow() - dt.timedelta(days=2)

    def at(self, hours: float) -> dt.datetime:
        return self.base + dt.timedelta(hours=hours)

    def new_set(self, when: dt.datetime) -> int:
        return create_set(
            self.engine, owner="openaddresses", repository="openaddresses", commit_sha="a" * 40, now=when
        )

    def new_job(self, when: dt.datetime) -> str:
        return create_job(self.engine, task_files={"b" * 40: PARK}, now=when)

    def run(
        self,
        when: dt.datetime,
        *,
        count: int | None = None,
        failed: bool = False,
        state_dir: Path | None = None,
        path: str = PARK,
        layer: str = "addresses",
        name: str = "primary",
        set_id: int | None = None,
        job_id: str | None = None,
        is_merged: bool | None = None,
        warning: str | None = None,
        state_changes: dict[str, Any] | None = None,
        task: AirflowTask | None = None,
        source_data: bytes = b'{"coverage": {}, "layers": {"addresses": [{"name": "primary"}]}}',
    ) -> int:
        """One run, recorded at ``when``: failed (a crash), or published from a copy of a real state directory."""
        started = when - dt.timedelta(minutes=5)
        if set_id is None and job_id is None:
            set_id = self.new_set(started)
        run_id = insert_run(
            self.engine,
            source_path=path,
            source_layer=layer,
            layer_name=name,
            source_data=source_data,
            set_id=set_id,
            job_id=job_id,
            is_merged=is_merged,
            task=task,
            started=started,
            now=started,
        )
        if failed:
            finish_run(self.engine, run_id, state=None, crashed=True, attempt_started=started, now=when)
            return run_id
        folder = self.tmp_path / f"state-{run_id}"
        shutil.copytree(state_dir or self.park_state, folder)
        keys, values = json.loads((folder / "index.json").read_text())
        state = dict(zip(keys, values, strict=True))
        if count is not None:
            state["address count"] = count
        state.update(state_changes or {})
        (folder / "index.json").write_text(json.dumps([list(state), list(state.values())]))
        self.storage.publish_run(run_id, folder)
        keys, values = json.loads(self.storage.path(f"runs/{run_id}/index.json").read_text())
        stats = json.loads((folder / "stats.json").read_text()) if (folder / "stats.json").exists() else None
        finish_run(
            self.engine,
            run_id,
            state=dict(zip(keys, values, strict=True)),
            stats=stats,
            warning=warning,
            attempt_started=started,
            now=when,
        )
        return run_id


@pytest.fixture
def recorder(site: Flask, tmp_path: Path, park_state: Path) -> Recorder:
    return Recorder(site, tmp_path, park_state)


class Rows(HTMLParser):
    """The rows of an HTML page's tables: each a list of cell texts (``th`` and ``td``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[list[str]]:
    parser = Rows()
    parser.feed(html)
    return parser.rows


# -- the source timeline ---------------------------------------------------------------------------------------


def test_the_timeline_lists_every_run_newest_first_with_status_change_and_merged_marks(
    site: Flask, recorder: Recorder
) -> None:
    first = recorder.run(recorder.at(0), count=1000)
    failed = recorder.run(recorder.at(1), failed=True)
    fewer = recorder.run(recorder.at(2), count=900)  # −10 % against the first (the failure is no baseline)
    job = recorder.new_job(recorder.at(3))
    unmerged = recorder.run(recorder.at(3), count=2000, job_id=job, is_merged=False)  # +122.2 % against 900
    held = recorder.run(recorder.at(4), count=450, warning="Address count dropped 50 % (900 → 450)")  # −50 %
    copy = copy_run(
        recorder.engine, fewer, set_id=recorder.new_set(recorder.at(5)), now=recorder.at(5)
    )  # 0 %

    (entry,) = source_timeline(recorder.engine, PARK)
    runs = entry["runs"]
    assert [run["id"] for run in runs] == [copy, held, unmerged, fewer, failed, first]
    assert [run["label"] for run in runs] == [
        "success",
        "warning",
        "success",
        "success",
        "failure",
        "success",
    ]
    assert [run["merged"] for run in runs] == [True, True, False, True, True, True]
    # Only merged, accepted successes are a baseline: not the job's run, not the held one, not the failure.
    assert [run["previous_id"] for run in runs] == [fewer, fewer, fewer, first, first, None]
    assert [None if run["change"] is None else round(run["change"], 1) for run in runs] == [
        0.0,
        -50.0,
        122.2,
        -10.0,
        None,
        None,
    ]
    assert entry["latest"]["id"] == copy

    client = site.test_client()
    page = client.get("/sources/us/wy/park")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    rows = [row for row in table_rows(html) if row and re.match(r"\d{4}-\d\d-\d\d", row[0])]
    assert [row[1].split()[0] for row in rows] == [
        "success",
        "warning",
        "success",
        "success",
        "failure",
        "success",
    ]
    assert [row[2] for row in rows] == ["900", "450", "2,000", "900", "", "1,000"]
    assert [row[3] for row in rows] == ["+0.0 %", "-50.0 %", "+122.2 %", "-10.0 %", "", ""]
    assert "unmerged" in rows[2][1]
    assert "held for review" in rows[1][1]
    assert "held for review" not in rows[0][1]
    assert "unmerged" not in rows[0][1]
    assert f'copy of <a href="/runs/{fewer}/">run {fewer}</a>' in html
    assert "Address count dropped 50 % (900 → 450)" in html
    assert f'href="/jobs/{job}"' in html
    assert SAMPLE_MARKUP.format(id=copy) in html
    assert "/latest/run/us/wy/park/addresses/primary.zip" in html
    assert "Source JSON" in html
    assert "&#34;layers&#34;" in html
    assert page.headers["Last-Modified"]
    again = client.get("/sources/us/wy/park", headers={"If-Modified-Since": page.headers["Last-Modified"]})
    assert again.status_code == 304

    document = client.get("/sources/us/wy/park.json")
    assert document.status_code == 200
    assert document.headers["Access-Control-Allow-Origin"] == "*"
    body = document.get_json()
    (json_entry,) = body["entries"]
    assert [run["id"] for run in json_entry["runs"]] == [copy, held, unmerged, fewer, failed, first]
    assert [run["status"] for run in json_entry["runs"]] == [run["label"] for run in runs]
    assert [run["change_percent"] for run in json_entry["runs"]] == [0.0, -50.0, 122.22, -10.0, None, None]
    assert json_entry["runs"][0]["copy_of"] == fewer
    assert json_entry["runs"][2]["merged"] is False
    assert json_entry["runs"][2]["job_id"] == job
    assert json_entry["latest"]["id"] == copy
    assert json_entry["latest_zip_url"] == "http://localhost/latest/run/us/wy/park/addresses/primary.zip"
    assert json_entry["runs"][0]["links"]["zip"].startswith(f"{SITE}/files/runs/{fewer}/")
    assert body["source_data"] == {"coverage": {}, "layers": {"addresses": [{"name": "primary"}]}}


def test_a_skipped_entry_and_an_unknown_source(site: Flask, recorder: Recorder, skip_state: Path) -> None:
    skipped = recorder.run(recorder.at(0), path=OAKLAND, state_dir=skip_state)
    (entry,) = source_timeline(recorder.engine, OAKLAND)
    assert [(run["id"], run["label"], run["source_problem"]) for run in entry["runs"]] == [
        (skipped, "skipped", "Source says to skip")
    ]
    client = site.test_client()
    html = client.get("/sources/us/ca/oakland").get_data(as_text=True)
    assert "skipped" in html
    assert "Source says to skip" in html
    for path in ("/sources/us/ca/nowhere", "/sources/us/ca/nowhere.json"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.get_data(as_text=True) == "Source us/ca/nowhere has no runs"


# -- latest ------------------------------------------------------------------------------------------------------


def test_latest_redirects_follow_the_newest_merged_accepted_run(site: Flask, recorder: Recorder) -> None:
    client = site.test_client()
    routes = (
        "/latest/run/us/wy/park.zip",
        "/latest/run/us/wy/park/addresses/primary.zip",
        "/latest/run/us/wy/park/addresses/primary.geojson.gz",
    )
    for route in routes:
        answer = client.get(route)
        assert (answer.status_code, answer.get_data(as_text=True)) == (404, "No latest run found")

    recorder.run(recorder.at(0), failed=True)
    assert all(client.get(route).status_code == 404 for route in routes)

    old = recorder.run(recorder.at(1))

    def targets() -> list[str]:
        answers = [client.get(route) for route in routes]
        for answer in answers:
            assert answer.status_code == 302
            assert answer.headers["Cache-Control"] == "public, max-age=60"
            assert "Last-Modified" not in answer.headers
        return [answer.headers["Location"] for answer in answers]

    keys, values = json.loads(recorder.storage.path(f"runs/{old}/index.json").read_text())
    zip_url = dict(zip(keys, values, strict=True))["processed"]
    assert zip_url.startswith(f"{SITE}/files/runs/{old}/")
    assert zip_url.endswith(".zip")
    assert targets() == [zip_url, zip_url, f"{SITE}/files/runs/{old}/out.geojson.gz"]
    assert client.get(f"/files/runs/{old}/out.geojson.gz").status_code == 200

    # Neither a pull request's run nor a run held by the quality gate moves them; a failure does not either.
    job = recorder.new_job(recorder.at(2))
    recorder.run(recorder.at(2), job_id=job, is_merged=False)
    recorder.run(recorder.at(3), warning="Address count dropped 50 %")
    recorder.run(recorder.at(4), failed=True)
    assert targets()[0] == zip_url

    newer = recorder.run(recorder.at(5))
    assert [target.split("/runs/")[1].split("/")[0] for target in targets()] == [str(newer)] * 3

    for route in (
        "/latest/run/us/wy/park/addresses/other.zip",
        "/latest/run/us/wy/elsewhere.zip",
        "/latest/run/x",
    ):
        answer = client.get(route)
        assert (answer.status_code, answer.get_data(as_text=True)) == (404, "No latest run found")
        assert answer.headers["Cache-Control"] == "no-store"


def test_the_source_zip_is_the_first_address_entry_of_the_file_that_has_one(
    site: Flask, recorder: Recorder
) -> None:
    document = b'{"layers": {"addresses": [{"name": "zeta"}, {"name": "beta"}, {"name": "alpha"}]}}'
    alpha = recorder.run(recorder.at(0), name="alpha", source_data=document)
    beta = recorder.run(recorder.at(1), name="beta", source_data=document)
    client = site.test_client()
    assert f"/runs/{beta}/" in client.get("/latest/run/us/wy/park.zip").headers["Location"]
    recorder.run(
        recorder.at(2), name="zeta", failed=True, source_data=document
    )  # zeta has no zip: beta still
    assert f"/runs/{beta}/" in client.get("/latest/run/us/wy/park.zip").headers["Location"]
    zeta = recorder.run(recorder.at(3), name="zeta", source_data=document)
    assert f"/runs/{zeta}/" in client.get("/latest/run/us/wy/park.zip").headers["Location"]
    location = client.get("/latest/run/us/wy/park/addresses/alpha.zip").headers["Location"]
    assert f"/runs/{alpha}/" in location


# -- health ------------------------------------------------------------------------------------------------------


def test_health_classes_around_the_30_day_edge(site: Flask, recorder: Recorder) -> None:
    now = utcnow()
    day = dt.timedelta(days=1)
    recorder.run(now - 30 * day + dt.timedelta(hours=1), name="fresh")
    recorder.run(now - 30 * day - dt.timedelta(hours=1), name="old")
    recorder.run(now - 2 * day, failed=True, name="broken")
    recorder.run(now - 40 * day, name="fell")
    recorder.run(now - day, failed=True, name="fell")
    recorder.run(now - day, warning="Address count dropped 50 %", name="held")  # never accepted: no success
    job = recorder.new_job(now - day)
    recorder.run(now - day, job_id=job, is_merged=False, name="proposed")  # a pull request's only: not listed

    health = {item["layer_name"]: item for item in entry_health(recorder.engine, now=now)}
    assert {name: item["health"] for name, item in health.items()} == {
        "broken": "never",
        "fell": "stale",
        "fresh": "healthy",
        "held": "never",
        "old": "stale",
    }
    assert health["fell"]["last_run"]["label"] == "failure"
    assert health["held"]["last_run"]["label"] == "warning"
    # The edge itself: a success exactly 30 days old is still healthy.
    edge = health["fresh"]["last_success"]["datetime_tz"]
    assert entry_health(recorder.engine, now=edge + 30 * day)[2]["health"] == "healthy"
    assert (
        entry_health(recorder.engine, now=edge + 30 * day + dt.timedelta(seconds=1))[2]["health"] == "stale"
    )

    client = site.test_client()
    answer = client.get("/health/sources.json")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    body = answer.get_json()
    assert body["counts"] == {"healthy": 1, "stale": 2, "never": 2}
    assert [item["layer_name"] for item in body["entries"]] == ["broken", "fell", "fresh", "held", "old"]
    failing = client.get("/health/sources.json?failing=true").get_json()
    assert failing["counts"] == body["counts"]
    assert [item["layer_name"] for item in failing["entries"]] == ["broken", "fell", "held", "old"]
    assert [item["last_status"] for item in failing["entries"]] == [
        "failure",
        "failure",
        "warning",
        "success",
    ]

    html = client.get("/health/sources?failing=true").get_data(as_text=True)
    rows = [row for row in table_rows(html) if len(row) == 7 and row[0] == "us/wy/park"]
    assert [(row[2], row[3]) for row in rows] == [
        ("broken", "never"),
        ("fell", "stale"),
        ("held", "never"),
        ("old", "stale"),
    ]
    assert "1 healthy" in html
    assert "2 stale" in html
    assert "2 never" in html
    assert "Last-Modified" not in client.get("/health/sources").headers

    ok = client.get("/health")
    assert (ok.status_code, ok.get_data(as_text=True), ok.mimetype) == (200, "OK", "text/plain")


# -- samples and the run page ------------------------------------------------------------------------------------


def test_the_sample_transposed_and_as_json(site: Flask, recorder: Recorder, park_state: Path) -> None:
    run_id = recorder.run(recorder.at(0))
    copy = copy_run(recorder.engine, run_id, set_id=recorder.new_set(recorder.at(1)), now=recorder.at(1))
    sample = json.loads((park_state / "sample.json").read_text())
    assert sample[0] == ["UID", "DLVRY_ADD"]
    assert len(sample) > 2
    client = site.test_client()

    for shown in (run_id, copy):  # a copy shows the sample of the run it reuses
        answer = client.get(f"/runs/{shown}/sample.json")
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert answer.get_json() == json.loads(json.dumps(sample))

        page = client.get(f"/runs/{shown}/sample.html")
        assert page.status_code == 200
        rows = table_rows(page.get_data(as_text=True))
        expected = [
            [str(name)] + ["" if record[index] is None else str(record[index]) for record in sample[1:]]
            for index, name in enumerate(sample[0])
        ]
        assert rows == expected
        assert rows[1][:2] == ["DLVRY_ADD", sample[1][1]]  # one line per column, its values across

    client_404 = client.get("/runs/999999/sample.html")
    assert (client_404.status_code, client_404.get_data(as_text=True)) == (404, "Run 999999 does not exist")
    assert client.get("/runs/999999/sample.json").get_data(as_text=True) == "Run 999999 does not exist"
    failed = recorder.run(recorder.at(2), failed=True)
    for suffix in ("html", "json"):
        answer = client.get(f"/runs/{failed}/sample.{suffix}")
        assert (answer.status_code, answer.get_data(as_text=True)) == (
            404,
            f"Run {failed} did not produce sample data",
        )

    recorder.storage.path(f"runs/{run_id}/sample.json").write_text('{"not": "rows"')
    for suffix in ("html", "json"):
        assert client.get(f"/runs/{run_id}/sample.{suffix}").status_code == 500
    recorder.storage.path(f"runs/{run_id}/sample.json").unlink()
    assert client.get(f"/runs/{run_id}/sample.html").status_code == 404


def test_the_run_page_shows_stats_warning_links_and_the_airflow_log(site: Flask, recorder: Recorder) -> None:
    task = AirflowTask(
        "openaddr_batch", "scheduled__2026-12-01T00:00:00+00:00", "process_source", map_index=3
    )
    run_id = recorder.run(
        recorder.at(0), count=450, warning="Address count dropped 50 % (900 → 450)", task=task
    )
    html = site.test_client().get(f"/runs/{run_id}/").get_data(as_text=True)
    assert (
        f'href="{AIRFLOW_UI}/dags/openaddr_batch/runs/scheduled__2026-12-01T00%3A00%3A00%2B00%3A00'
        f'/tasks/process_source/mapped/3"'
    ) in html
    assert "Address count dropped 50 % (900 → 450)" in html
    assert "held for review by the quality gate" in html
    assert "&#34;count&#34;" in html  # runs.stats, pretty-printed
    assert re.search(rf'href="{re.escape(SITE)}/files/runs/{run_id}/[^"]+\.zip">zip</a>', html)
    assert f'href="{SITE}/files/runs/{run_id}/output.txt">output</a>' in html
    assert f'href="/runs/{run_id}/sample.html">sample</a>' in html
    assert SAMPLE_MARKUP.format(id=run_id) in html
    assert 'href="/sources/us/wy/park"' in html

    site.config["AIRFLOW_UI_URL"] = None
    assert "/mapped/3" not in site.test_client().get(f"/runs/{run_id}/").get_data(as_text=True)


def test_hostile_paths_and_problems_are_escaped(site: Flask, recorder: Recorder) -> None:
    path = 'sources/x/<script>alert("p")</script>.json'
    run_id = recorder.run(
        recorder.at(0),
        path=path,
        warning="<img src=x onerror=alert(1)>",
        state_changes={"source problem": "<b>bold</b>", "preview": "javascript://%0Aalert(2)"},
    )
    client = site.test_client()
    html = client.get('/sources/x/<script>alert("p")</script>').get_data(as_text=True)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;p&#34;)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "javascript:" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    run_page = client.get(f"/runs/{run_id}/").get_data(as_text=True)
    assert 'href="javascript:' not in run_page
    assert "javascript://%0Aalert(2)" in run_page
    health = client.get("/health/sources").get_data(as_text=True)
    assert "<script>alert" not in health
    assert "&lt;script&gt;" in health


# -- robots, headers -----------------------------------------------------------------------------------------------


def test_robots_and_headers(site: Flask, own_db_url: sa.URL) -> None:
    client = site.test_client()
    robots = client.get("/robots.txt")
    assert robots.mimetype == "text/plain"
    lines = robots.get_data(as_text=True).splitlines()
    assert lines[0] == "User-agent: *"
    assert {line for line in lines if line.startswith("Allow")} == {"Allow: /", "Allow: /sources/"}
    assert {line for line in lines if line.startswith("Disallow")} == {
        "Disallow: /runs/",
        "Disallow: /jobs/",
        "Disallow: /sets/",
        "Disallow: /latest/",
    }
    assert client.get("/headers").status_code == 404

    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": own_db_url.render_as_string(hide_password=False),
            "DEBUG_HEADERS": "true",
        }
    )
    try:
        answer = app.test_client().get("/headers", headers={"X-Forwarded-For": "203.0.113.9"})
        assert answer.status_code == 200
        assert answer.get_json()["X-Forwarded-For"] == "203.0.113.9"
    finally:
        close_engine(app)
