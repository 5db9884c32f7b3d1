"""The results site's index, sets and jobs (machine-ci.md §9.1) on a database filled through the library's own
functions (sets, jobs, runs recorded as the DAGs record them; collection zips as rows), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.db import listing, make_engine, upgrade
from openaddr.db.jobs import complete_set, create_job, create_set, update_job
from openaddr.db.runs import insert_run
from openaddr.db.schema import zips
from openaddr.outputs import STATE_KEYS
from tests.db_fixtures import create_database, drop_database
from webhook import create_app
from webhook.db import close_engine, get_engine

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flask import Flask
    from werkzeug.test import TestResponse

OWNER, REPO = "openaddresses", "openaddresses"
SHA = "a" * 40
JOB_SHA = "b" * 40
FILES = "https://results.example/runs"
T0 = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
HOSTILE = "sources/<script>alert(1)</script>.json"
PARK = "sources/us/wy/park.json"


@pytest.fixture(scope="module")
def own_postgres_url(postgres_admin_url: sa.URL) -> Iterator[sa.URL]:
    """A migrated PostgreSQL database of this module's own: its tests count every row, which the session's shared
    database (other modules' rows) would not allow."""
    url = create_database(postgres_admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture
def site(db_url: sa.URL, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The app on an empty migrated database of each backend, outside the embedded mode, with default settings."""
    if db_url.get_backend_name() == "postgresql":
        db_url = request.getfixturevalue("own_postgres_url")
        engine = make_engine(db_url, poolclass=sa.NullPool)
        with engine.begin() as connection:
            connection.exec_driver_sql("TRUNCATE runs, jobs, sets, zips RESTART IDENTITY CASCADE")
        engine.dispose()
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_RESULTS", "OPENADDR_EMBEDDED"):
        monkeypatch.delenv(key, raising=False)
    for key in ("BASE_URL", "SITE_OWNER", "SITE_REPOSITORY"):
        monkeypatch.delenv(f"OA_WEBHOOK_{key}", raising=False)
    app = create_app({"TESTING": True, "DATABASE_URL": db_url.render_as_string(hide_password=False)})
    yield app
    close_engine(app)


def state(**values: Any) -> dict[str, Any]:
    """A processing.md §9.7 state: every key null, then ``values`` (keys with spaces as ``address_count`` etc.)."""
    recorded: dict[str, Any] = dict.fromkeys(STATE_KEYS)
    recorded.update({key.replace("_", " "): value for key, value in values.items()})
    return recorded


def record(
    app: Flask,
    path: str,
    *,
    layer: str = "addresses",
    name: str = "primary",
    at: dt.datetime,
    values: dict[str, Any] | None = None,
    message: str | None = None,
    **options: Any,
) -> int:
    """A run recorded in one go, its file names published under ``FILES/<id>/`` as ``publish_run`` names them."""
    engine = get_engine(app)
    run_id = insert_run(engine, source_path=path, source_layer=layer, layer_name=name, now=at, **options)
    if values is not None or message is not None:
        from openaddr.db.runs import finish_run

        recorded = state(**(values or {}))
        urls = {
            key: f"{FILES}/{run_id}/{recorded[key]}" for key in ("cache", "sample", "processed", "output")
        }
        finish_run(
            engine,
            run_id,
            state=recorded if values is not None else None,
            message=message,
            urls={key: url for key, url in urls.items() if recorded.get(key)},
            process_hash="f" * 32 if recorded.get("processed") else None,
            attempt_started=at,
            now=at,
        )
    return run_id


def good(**extra: Any) -> dict[str, Any]:
    """State values of a successful address run."""
    return {
        "source": "x.json",
        "cache": "cache.zip",
        "sample": "sample.json",
        "processed": "out.zip",
        "output": "output.txt",
        "geometry_type": "Point",
        "address_count": 12,
        "cache_time": "0:00:01.500000",
        "process_time": "0:00:02",
        "fingerprint": "c" * 32,
        "attribution_required": "false",
        "share-alike": "false",
        "license": "CC0",
        "website": "https://park.example",
        "code_version": "8.0.0",
        **extra,
    }


def fill(app: Flask) -> dict[str, Any]:
    """Two sets of the site's repository (the first complete), one of another repository, a CI job, and zips."""
    engine = get_engine(app)
    ids: dict[str, Any] = {}
    ids["set"] = create_set(engine, owner=OWNER, repository=REPO, commit_sha=SHA, now=T0)
    common = {"set_id": ids["set"], "commit_sha": SHA}
    ids["park"] = record(app, PARK, at=T0 + dt.timedelta(minutes=5), values=good(), **common)
    ids["park_buildings"] = record(
        app,
        PARK,
        layer="buildings",
        name="county",
        at=T0 + dt.timedelta(minutes=6),
        values=good(processed="out.geojson", geometry_type="Polygon", address_count=3),
        **common,
    )
    ids["hostile"] = record(
        app,
        HOSTILE,
        at=T0 + dt.timedelta(minutes=7),
        values=good(
            attribution_required="true",
            attribution_name="Tab\there <b>bold</b>",
            license="<i>odd</i> licence",
            website=None,
        ),
        source_data=json.dumps({"website": "https://hostile.example"}).encode(),
        **common,
    )
    ids["cache_failed"] = record(
        app,
        "sources/fr/paris.json",
        at=T0 + dt.timedelta(minutes=8),
        values={
            "source": "paris.json",
            "output": "output.txt",
            "source_problem": "Could not download source data",
            "version": "1\n2",
        },
        **common,
    )
    ids["nocache"] = record(
        app,
        "sources/de/berlin.json",
        at=T0 + dt.timedelta(minutes=9),
        values={"output": "output.txt"},
        **common,
    )
    ids["skipped"] = record(
        app,
        "sources/it/roma.json",
        at=T0 + dt.timedelta(minutes=10),
        values={"skipped": True, "source_problem": "Source says to skip", "output": "output.txt"},
        **common,
    )
    ids["no_conform"] = record(
        app,
        "sources/es/madrid.json",
        at=T0 + dt.timedelta(minutes=11),
        values={
            "cache": "cache.zip",
            "sample": "sample.json",
            "output": "output.txt",
            "source_problem": "Source is missing a conform object",
        },
        **common,
    )
    ids["timeout"] = record(
        app,
        "sources/pl/krakow.json",
        at=T0 + dt.timedelta(minutes=12),
        message="Timed out after 3:00:00",
        **common,
    )
    complete_set(
        engine, ids["set"], render_world="https://results.example/world.png", now=T0 + dt.timedelta(hours=1)
    )

    ids["incomplete"] = create_set(
        engine, owner=OWNER, repository=REPO, commit_sha="c" * 40, now=T0 + dt.timedelta(days=1)
    )
    ids["newer_park"] = record(
        app,
        PARK,
        at=T0 + dt.timedelta(days=1, minutes=1),
        values=good(address_count=13),
        set_id=ids["incomplete"],
        commit_sha="c" * 40,
    )
    ids["other_repo"] = create_set(engine, owner="someone", repository="fork", commit_sha="d" * 40, now=T0)
    complete_set(engine, ids["other_repo"], now=T0 + dt.timedelta(days=3))

    ids["job"] = create_job(
        engine,
        task_files={"1" * 40: PARK, "2" * 40: "sources/fr/paris.json", "3" * 40: "sources/xx/pending.json"},
        github_owner="contributor",
        github_repository="openaddresses",
        github_status_url=f"https://api.github.com/repos/contributor/openaddresses/statuses/{JOB_SHA}",
        now=T0 + dt.timedelta(days=2),
    )
    at = T0 + dt.timedelta(days=2, minutes=3)
    job = {"job_id": ids["job"], "commit_sha": JOB_SHA}
    ids["job_ok"] = record(app, PARK, at=at, values=good(), **job)
    ids["job_fail"] = record(app, "sources/fr/paris.json", at=at, values={"output": "output.txt"}, **job)
    update_job(
        engine,
        ids["job"],
        planned={
            PARK: [("addresses", "primary")],
            "sources/fr/paris.json": [("addresses", "primary")],
            "sources/xx/pending.json": [("addresses", "primary")],
        },
    )

    with engine.begin() as connection:
        connection.execute(
            sa.insert(zips),
            [
                zip_row("openaddr-collected-global.zip", "global", "", None, 5 * 1024 * 1024),
                zip_row("openaddr-collected-global-sa.zip", "global", "sa", None, 2048),
                zip_row("openaddr-collected-europe.zip", "europe", "", None, 500),  # under 1 KiB
                zip_row("openaddr-collected-global-buildings.geojsonl.zip", "global", "", "buildings", 4096),
                zip_row(
                    "openaddr-collected-global-buildings.parquet", "global", "", "buildings", 3000, "parquet"
                ),
                {  # an empty GeoParquet file (its schema alone passes 1 KiB) is not listed
                    **zip_row(
                        "openaddr-collected-asia-buildings.parquet", "asia", "", "buildings", 3000, "parquet"
                    ),
                    "address_count": 0,
                },
                {**zip_row("openaddr-collected-old.zip", "asia", "", None, 9999), "is_current": False},
            ],
        )
    return ids


ZIP_TIME = T0 + dt.timedelta(hours=2)


def zip_row(
    name: str, collection: str, attr: str, layer: str | None, size: int, format: str | None = None
) -> dict[str, Any]:
    """A ``zips`` row as collect publishes it (format: ``zip`` without a layer, else ``geojsonl`` unless given)."""
    return {
        "format": format or ("zip" if layer is None else "geojsonl"),
        "url": f"https://results.example/{name}",
        "datetime": ZIP_TIME,
        "is_current": True,
        "content_length": size,
        "address_count": 25,
        "collection": collection,
        "license_attr": attr,
        "layer": layer,
    }


def text(answer: TestResponse) -> str:
    """The body of a 200 answer."""
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def table_rows(html: str, table_class: str) -> list[str]:
    """The ``<tr>`` of a table's body, in order."""
    match = re.search(rf'<table class="{table_class}">(.*?)</table></div>', html, re.S)
    assert match, f"no table {table_class}"
    body = match.group(1).split("<tbody>", 1)[-1]
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


# --------------------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------------------


def test_the_index_shows_the_latest_set_totals_zips_and_runs_to_date(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    html = text(client.get("/"))
    assert f'href="/sets/{ids["set"]}/"' in html
    assert 'href="/latest/set"' in html
    assert 'href="/state.txt"' in html
    # Latest runs: park's newest (13 addresses from the incomplete set), buildings 3, hostile 12; job runs unmerged.
    totals = dict(re.findall(r"<tr><th>([^<]+)</th><td class=\"num\">([^<]*)</td></tr>", html))
    assert totals["Addresses"] == "28"
    assert totals["Sources"] == "7"
    assert totals["Completed"] == "3"
    assert totals["Failed cache"] == "3"  # paris, berlin, krakow (roma was skipped)
    assert totals["Cached, not processed"] == "1"  # madrid
    zip_rows = table_rows(html, "zips")
    assert [re.search(r">([^<]+\.(?:zip|parquet))</a>", row).group(1) for row in zip_rows] == [  # type: ignore[union-attr]
        "openaddr-collected-global.zip",
        "openaddr-collected-global-sa.zip",
        "openaddr-collected-global-buildings.geojsonl.zip",
        "openaddr-collected-global-buildings.parquet",
    ]
    assert "<td>GeoParquet</td>" in zip_rows[3]
    assert "<td>Freely Shareable</td>" in zip_rows[3]
    assert "5.0 MiB" in zip_rows[0]
    assert "2.0 KiB" in zip_rows[1]
    runs = table_rows(html, "runs")
    assert len(runs) == 8
    # Successes first, then by path.
    statuses = [re.search(r'<span class="(ok|fail|muted)">(\w+)</span>', row).group(2) for row in runs]  # type: ignore[union-attr]
    first_failure = statuses.index("failed")
    assert all(status in ("succeeded", "skipped") for status in statuses[:first_failure])
    assert all(status == "failed" for status in statuses[first_failure:])
    assert f'href="https://github.com/{OWNER}/{REPO}/blob/{"c" * 40}/{PARK}"' in html
    assert (
        f'<details class="sample" data-sample-url="/runs/{ids["newer_park"]}/sample.json"><summary>Sample</summary>'
        "<table></table></details>"
    ) in html


def test_the_index_lists_twenty_runs_unless_all(site: Flask) -> None:
    engine = get_engine(site)
    set_id = create_set(engine, owner=OWNER, repository=REPO, commit_sha=SHA, now=T0)
    for number in range(23):
        record(site, f"sources/xx/s{number:02}.json", at=T0, values=good(), set_id=set_id, commit_sha=SHA)
    client = site.test_client()
    assert len(table_rows(text(client.get("/")), "runs")) == 20
    assert 'href="/?runs=all"' in text(client.get("/"))
    assert len(table_rows(text(client.get("/?runs=all")), "runs")) == 23


def test_an_empty_site_answers(site: Flask) -> None:
    client = site.test_client()
    assert "No completed set" in text(client.get("/"))
    assert text(client.get("/state.txt")) == "\t".join(listing.STATE_TXT_COLUMNS) + "\r\n"
    assert client.get("/latest/set").status_code == 404
    assert "No latest set found" in client.get("/latest/set").get_data(as_text=True)
    assert json.loads(text(client.get("/latest/licenses.json"))) == {"licenses": []}
    assert json.loads(text(client.get("/index.json")))["collections"] == {}
    assert "No sets." in text(client.get("/sets/"))
    assert "No jobs." in text(client.get("/jobs/"))


# --------------------------------------------------------------------------------------------------------------
# state.txt, index.json, licenses.json
# --------------------------------------------------------------------------------------------------------------


def parse_state(body: str) -> list[dict[str, str]]:
    """``state.txt`` read back with csv's excel-tab dialect."""
    reader = csv.reader(io.StringIO(body), dialect="excel-tab")
    header = next(reader)
    assert header == list(listing.STATE_TXT_COLUMNS)
    return [dict(zip(header, row, strict=True)) for row in reader]


def test_state_txt_has_the_columns_sorted_by_path_and_survives_a_tab(site: Flask) -> None:
    ids = fill(site)
    answer = site.test_client().get("/state.txt")
    assert answer.mimetype == "text/plain"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    rows = parse_state(text(answer))
    assert [(row["source"], row["layer"], row["name"]) for row in rows] == [
        ("<script>alert(1)</script>.json", "addresses", "primary"),
        ("de/berlin.json", "addresses", "primary"),
        ("es/madrid.json", "addresses", "primary"),
        ("fr/paris.json", "addresses", "primary"),
        ("it/roma.json", "addresses", "primary"),
        ("pl/krakow.json", "addresses", "primary"),
        ("us/wy/park.json", "addresses", "primary"),
        ("us/wy/park.json", "buildings", "county"),
    ]
    park = rows[-2]
    assert park["cache"] == f"{FILES}/{ids['newer_park']}/cache.zip"
    assert park["processed"] == f"{FILES}/{ids['newer_park']}/out.zip"
    assert park["address count"] == "13"
    assert park["process hash"] == "f" * 32
    assert park["cache time"] == "0:00:01.500000"
    assert park["code version"] == "8.0.0"
    assert rows[0]["attribution name"] == "Tab\there <b>bold</b>"
    # A tab or a line break in a value is quoted: one CRLF-ended record per run, 17 separators in each but the tab's.
    body = text(answer)
    assert rows[3]["version"] == "1\n2"
    assert '\t"1\n2"\t' in body
    assert '\t"Tab\there <b>bold</b>"\t' in body
    records = body.split("\r\n")
    assert records[-1] == ""
    assert len(records[:-1]) == 1 + len(rows)
    assert [record.count("\t") for record in records[:-1]] == [17, 18] + [17] * (len(rows) - 1)


def test_a_set_state_txt_is_that_sets_runs_with_absolute_urls(site: Flask) -> None:
    ids = fill(site)
    engine = get_engine(site)
    relative = create_set(engine, owner=OWNER, repository=REPO, commit_sha=SHA, now=T0)
    insert_run(
        engine,
        source_path=PARK,
        source_layer="addresses",
        layer_name="primary",
        set_id=relative,
        state=state(cache="/files/runs/9/cache.zip", output="output.txt"),
        now=T0,
    )
    client = site.test_client()
    rows = parse_state(text(client.get(f"/sets/{ids['incomplete']}/state.txt")))
    assert [row["address count"] for row in rows] == ["13"]
    rows = parse_state(text(client.get(f"/sets/{relative}/state.txt")))
    assert rows[0]["cache"] == "http://localhost/files/runs/9/cache.zip"
    site.config["BASE_URL"] = "https://machine.example"
    rows = parse_state(text(client.get(f"/sets/{relative}/state.txt")))
    assert rows[0]["cache"] == "https://machine.example/files/runs/9/cache.zip"
    assert rows[0]["output"] == "https://machine.example/output.txt"


def test_index_json_has_the_spec_keys_and_collections(site: Flask) -> None:
    fill(site)
    site.config["BASE_URL"] = "https://machine.example"
    answer = site.test_client().get("/index.json")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    body = json.loads(text(answer))
    assert body["run_states_url"] == "https://machine.example/state.txt"
    assert body["latest_run_processed_url"] == "https://machine.example/latest/run/{source}.zip"
    assert body["tileindex_url"] == "https://machine.example/tiles/{lon}/{lat}.zip"
    assert body["licenses_url"] == "https://machine.example/latest/licenses.json"
    assert body["latest_set_url"] == "https://machine.example/latest/set"
    assert body["render_world_url"] == "https://results.example/world.png"
    assert body["render_usa_url"] is None
    assert body["collections"] == {
        "global": {
            "": {
                "url": "https://results.example/openaddr-collected-global.zip",
                "content_length": 5 * 1024 * 1024,
                "license": "Freely Shareable",
            },
            "sa": {
                "url": "https://results.example/openaddr-collected-global-sa.zip",
                "content_length": 2048,
                "license": "Share-Alike Required",
            },
        }
    }
    assert body["geojson_collections"] == {
        "buildings": {
            "global": {
                "": {
                    "url": "https://results.example/openaddr-collected-global-buildings.geojsonl.zip",
                    "content_length": 4096,
                    "license": "Freely Shareable",
                }
            }
        }
    }
    assert body["geoparquet_collections"] == {
        "buildings": {
            "global": {
                "": {
                    "url": "https://results.example/openaddr-collected-global-buildings.parquet",
                    "content_length": 3000,
                    "license": "Freely Shareable",
                    "address_count": 25,
                }
            }
        }
    }


def test_index_json_lists_the_processed_collections_apart(site: Flask) -> None:
    fill(site)
    with get_engine(site).begin() as connection:
        connection.execute(
            sa.insert(zips), [zip_row("openaddr-collected-global-processed.zip", "global", "", None, 3072)]
        )
    body = json.loads(text(site.test_client().get("/index.json")))
    assert body["collections"]["global"][""]["url"] == "https://results.example/openaddr-collected-global.zip"
    assert body["processed_collections"] == {
        "global": {
            "": {
                "url": "https://results.example/openaddr-collected-global-processed.zip",
                "content_length": 3072,
                "license": "Freely Shareable",
            }
        }
    }


def test_licenses_are_grouped_and_sorted(site: Flask) -> None:
    fill(site)
    body = json.loads(text(site.test_client().get("/latest/licenses.json")))
    assert body == {
        "licenses": [
            # The skipped run succeeded but names no licence.
            {"license": None, "attribution": None, "sources": [["it/roma.json", None]]},
            {
                "license": "<i>odd</i> licence",
                "attribution": "Tab\there <b>bold</b>",
                # The website is not in the state: it comes from the source file.
                "sources": [["<script>alert(1)</script>.json", "https://hostile.example"]],
            },
            {
                "license": "CC0",
                "attribution": None,
                "sources": [["us/wy/park.json", "https://park.example"]],
            },
        ]
    }


# --------------------------------------------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------------------------------------------


def test_latest_set_redirects_to_the_newest_complete_set_of_the_site_repository(site: Flask) -> None:
    ids = fill(site)
    answer = site.test_client().get("/latest/set")
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"/sets/{ids['set']}/"
    site.config.update(SITE_OWNER="someone", SITE_REPOSITORY="fork")
    assert site.test_client().get("/latest/set").headers["Location"] == f"/sets/{ids['other_repo']}/"


def test_the_sets_list_pages_newest_first(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    html = text(client.get("/sets/"))
    listed = [int(n) for n in re.findall(r'<td><a href="/sets/(\d+)/">', html)]
    assert listed == sorted([ids["set"], ids["incomplete"], ids["other_repo"]], reverse=True)
    assert html.count("✔") == 2
    assert "More…" not in html
    html = text(client.get("/sets/?n=2"))
    assert len(re.findall(r'<td><a href="/sets/(\d+)/">', html)) == 2
    more = re.search(r'<a href="([^"]+)">More…</a>', html)
    assert more is not None
    html = text(client.get(more.group(1).replace("&amp;", "&")))
    assert [int(n) for n in re.findall(r'<td><a href="/sets/(\d+)/">', html)] == [listed[2]]
    for bad in ("past=x", "n=0", "n=-3", "past=0", "n=100000"):
        assert client.get(f"/sets/?{bad}").status_code == 400
    assert "More…" not in text(client.get(f"/sets/?past={'9' * 20}"))


def test_a_set_page_shows_its_runs_problems_first(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    html = text(client.get(f"/sets/{ids['set']}/"))
    assert "This set is incomplete" not in html
    assert 'href="https://results.example/world.png"' in html
    runs = table_rows(html, "runs")
    problems = [re.findall(r'<span class="(?:fail|warn)">([^<]+)</span>', row) for row in runs]
    first_clean = next(index for index, found in enumerate(problems) if not found)
    assert all(problems[:first_clean])
    assert not any(problems[first_clean:])
    by_run = {int(re.search(r'href="/runs/(\d+)/"', row).group(1)): row for row in runs}  # type: ignore[union-attr]
    assert "cache failed" in by_run[ids["nocache"]]
    assert f'href="{FILES}/{ids["nocache"]}/output.txt">log</a>' in by_run[ids["nocache"]]
    assert "source says to skip" in by_run[ids["skipped"]]
    assert "missing conform" in by_run[ids["no_conform"]]
    assert "Timed out after 3:00:00" in by_run[ids["timeout"]]
    assert "Could not download source data" in by_run[ids["cache_failed"]]
    assert by_run[ids["park"]].count("<details") == 1
    assert "<details" not in by_run[ids["nocache"]]
    assert f'href="https://github.com/{OWNER}/{REPO}/blob/{SHA}/{PARK}"' in by_run[ids["park"]]
    assert "This set is incomplete" in text(client.get(f"/sets/{ids['incomplete']}/"))


def test_set_json_and_bad_or_unknown_ids(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    answer = client.get(f"/sets/{ids['set']}.json")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(text(answer)) == {
        "id": ids["set"],
        "commit_sha": SHA,
        "datetime_start": T0.isoformat(),
        "datetime_end": (T0 + dt.timedelta(hours=1)).isoformat(),
        "render_world_url": "https://results.example/world.png",
        "render_europe_url": None,
        "render_usa_url": None,
        "render_geojson_url": None,
    }
    assert json.loads(text(client.get(f"/sets/{ids['incomplete']}.json")))["datetime_end"] is None
    for route in ("/sets/{}/", "/sets/{}.json", "/sets/{}/state.txt"):
        assert client.get(route.format("abc")).status_code == 400
        assert client.get(route.format("-1")).status_code == 400
        assert client.get(route.format("0")).status_code == 400
        assert client.get(route.format("99999")).status_code == 404
        assert client.get(route.format("9" * 20)).status_code == 404  # past PostgreSQL's integer


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------


def test_the_jobs_list_pages_by_sequence(site: Flask) -> None:
    engine = get_engine(site)
    job_ids = [
        create_job(engine, task_files={f"{n:040}": f"sources/x{n}.json"}, now=T0 + dt.timedelta(minutes=n))
        for n in range(30)
    ]
    client = site.test_client()
    html = text(client.get("/jobs/"))
    listed = re.findall(r'<td><a href="/jobs/([^"]+)">\d+</a></td>', html)
    assert listed == job_ids[::-1][:25]
    assert "1 file</a>" in html
    more = re.search(r'<a href="([^"]+)">More…</a>', html)
    assert more is not None
    html = text(client.get(more.group(1).replace("&amp;", "&")))
    assert re.findall(r'<td><a href="/jobs/([^"]+)">\d+</a></td>', html) == job_ids[::-1][25:]
    assert "More…" not in html
    for bad in ("past=abc", "n=x", "n=0"):
        assert client.get(f"/jobs/?{bad}").status_code == 400


def test_a_job_page_orders_files_and_shows_its_runs(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    listed = text(client.get("/jobs/"))
    assert "✘" in listed
    assert "3 files</a>" in listed
    html = text(client.get(f"/jobs/{ids['job']}"))
    assert "This job failed" in html
    assert f'href="https://github.com/contributor/openaddresses/commit/{JOB_SHA}"' in html
    files = table_rows(html, "files")
    assert [re.search(r"<td>(sources/[^<]+)", row).group(1) for row in files] == [  # type: ignore[union-attr]
        "sources/fr/paris.json",
        "sources/xx/pending.json",
        PARK,
    ]
    assert "✘" in files[0]
    assert "✔" in files[2]
    assert f'href="{FILES}/{ids["job_ok"]}/output.txt">log</a>' in files[2]
    assert f'href="{FILES}/{ids["job_ok"]}/out.zip">data</a>' in files[2]
    assert f'href="{FILES}/{ids["job_ok"]}/sample.json">sample</a>' in files[2]
    runs = table_rows(html, "runs")
    assert len(runs) == 2
    assert f'href="https://github.com/contributor/openaddresses/blob/{JOB_SHA}/{PARK}"' in html
    missing = client.get("/jobs/no-such-job")
    assert missing.status_code == 404
    assert "Job no-such-job not found" in missing.get_data(as_text=True)


# --------------------------------------------------------------------------------------------------------------
# Escaping, caching
# --------------------------------------------------------------------------------------------------------------


def test_database_strings_are_escaped(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    for route in ("/", "/?runs=all", f"/sets/{ids['set']}/"):
        html = text(client.get(route))
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;.json" in html
    engine = get_engine(site)
    job = create_job(engine, task_files={"9" * 40: HOSTILE}, github_owner="<b>x</b>", now=T0)
    record(site, HOSTILE, at=T0, values=good(), job_id=job, commit_sha=JOB_SHA)
    update_job(engine, job)
    html = text(client.get(f"/jobs/{job}"))
    assert "<script>" not in html
    assert "<b>x</b>" not in html
    assert "&lt;script&gt;" in html
    assert "<b>x</b>" not in text(client.get("/jobs/"))


def test_only_http_urls_become_links(site: Flask) -> None:
    engine = get_engine(site)
    set_id = create_set(engine, owner=OWNER, repository=REPO, commit_sha=SHA, now=T0)
    insert_run(
        engine,
        source_path=PARK,
        source_layer="addresses",
        layer_name="primary",
        set_id=set_id,
        state=state(cache="javascript:alert(1)", processed="//evil.example/x.zip", output="data:text/html,x"),
        message="Failed to produce sample data",
        now=T0,
    )
    complete_set(engine, set_id, render_world="javascript:alert(2)", render_usa="https://ok.example/usa.png")
    with engine.begin() as connection:
        connection.execute(
            sa.insert(zips), [{**zip_row("x.zip", "global", "", None, 4096), "url": "javascript:x"}]
        )
    client = site.test_client()
    for route in ("/", f"/sets/{set_id}/"):
        html = text(client.get(route))
        assert not re.search(r'href="(javascript|data):|href="//', html), route
    html = text(client.get(f"/sets/{set_id}/"))
    assert 'href="https://ok.example/usa.png"' in html


@pytest.mark.parametrize(
    ("route", "newest"),
    [
        ("/", ZIP_TIME + dt.timedelta(days=5)),
        ("/state.txt", T0 + dt.timedelta(days=1, minutes=1)),
        ("/index.json", ZIP_TIME + dt.timedelta(days=5)),
        ("/latest/licenses.json", T0 + dt.timedelta(days=1, minutes=1)),
        ("/sets/", T0 + dt.timedelta(days=3)),
        ("/jobs/", T0 + dt.timedelta(days=2, minutes=3)),
    ],
)
def test_last_modified_and_304(site: Flask, route: str, newest: dt.datetime) -> None:
    fill(site)
    if route in ("/", "/index.json"):
        with get_engine(site).begin() as connection:
            connection.execute(sa.update(zips).values(datetime=newest))
    client = site.test_client()
    answer = client.get(route)
    assert answer.status_code == 200
    assert answer.last_modified == newest
    again = client.get(route, headers={"If-Modified-Since": answer.headers["Last-Modified"]})
    assert again.status_code == 304
    older = (newest - dt.timedelta(seconds=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert client.get(route, headers={"If-Modified-Since": older}).status_code == 200


def test_pages_of_one_set_and_job_are_conditional(site: Flask) -> None:
    ids = fill(site)
    client = site.test_client()
    for route, newest in (
        (f"/sets/{ids['set']}/", T0 + dt.timedelta(hours=1)),
        (f"/sets/{ids['set']}.json", T0 + dt.timedelta(hours=1)),
        (f"/sets/{ids['incomplete']}/state.txt", T0 + dt.timedelta(days=1, minutes=1)),
        (f"/jobs/{ids['job']}", T0 + dt.timedelta(days=2, minutes=3)),
    ):
        answer = client.get(route)
        assert answer.last_modified == newest, route
        assert (
            client.get(route, headers={"If-Modified-Since": answer.headers["Last-Modified"]}).status_code
            == 304
        )
