"""The run page and, in embedded mode, the published run files over http (what the Airflow UI's links open)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from typing import TYPE_CHECKING

import pytest

from openaddr.db import runs as db_runs
from openaddr.db.runs import finish_run, insert_run
from openaddr.outputs import STATE_KEYS
from openaddr.storage import LocalStorage
from webhook import create_app
from webhook.db import close_engine, get_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from flask import Flask

SITE = "http://127.0.0.1:5000"
PARK = "sources/us/wy/park.json"


@pytest.fixture
def storage_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "storage"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("outside the storage\n")
    return folder


@pytest.fixture
def site(db_url: sa.URL, storage_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL", "OPENADDR_RESULTS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OPENADDR_EMBEDDED", "1")
    monkeypatch.setenv("OPENADDR_HOME", str(storage_folder.parent))
    app = create_app({"TESTING": True, "DATABASE_URL": db_url.render_as_string(hide_password=False)})
    yield app
    close_engine(app)


def publish_park(app: Flask, fixtures: Path, tmp_path: Path) -> int:
    """A run of the real us-wy-park source recorded and published as ``process_source`` does."""
    source = (fixtures / "sources" / "us-wy-park.json").read_bytes()
    engine = get_engine(app)
    run_id = insert_run(
        engine, source_path=PARK, source_layer="addresses", layer_name="primary", source_data=source
    )
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    shutil.copy(fixtures / "data" / "us-wy-park.zip", state_dir / "cache.zip")
    (state_dir / "output.txt").write_text("processed us-wy-park\n")
    values = {key: None for key in STATE_KEYS}
    values.update(source="us-wy-park.json", cache="cache.zip", output="output.txt", **{"address count": 12})
    (state_dir / "index.json").write_text(json.dumps([list(values), list(values.values())]))
    storage = LocalStorage(app.config["FILES_FOLDER"], public_url=f"{SITE}/files")
    storage.publish_run(run_id, state_dir)
    state = json.loads((storage.path(f"runs/{run_id}/index.json")).read_text())
    finish_run(
        engine,
        run_id,
        state=dict(zip(*state, strict=True)),
        attempt_started=db_runs.utcnow(),
        message=db_runs.OK_MESSAGE,
    )
    return run_id


def test_embedded_mode_serves_the_local_storage(site: Flask, storage_folder: Path) -> None:
    assert site.config["FILES_FOLDER"] == str(storage_folder.resolve())


def test_a_published_run_is_served_and_its_page_links_its_files(
    site: Flask, fixtures: Path, tmp_path: Path
) -> None:
    run_id = publish_park(site, fixtures, tmp_path)
    client = site.test_client()

    index = client.get(f"/files/runs/{run_id}/index.json")
    assert index.status_code == 200
    keys, values = index.get_json()
    state = dict(zip(keys, values, strict=True))
    # The published state names its files by their http URLs, which this route serves.
    assert state["cache"] == f"{SITE}/files/runs/{run_id}/cache.zip"
    cache = client.get(f"/files/runs/{run_id}/cache.zip")
    assert cache.status_code == 200
    assert cache.data == (fixtures / "data" / "us-wy-park.zip").read_bytes()

    page = client.get(f"/runs/{run_id}/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"Run {run_id}: {PARK}" in html
    assert "succeeded" in html
    assert db_runs.OK_MESSAGE in html
    assert f'href="/files/runs/{run_id}/index.json"' in html
    assert f'href="/files/runs/{run_id}/cache.zip"' in html
    assert f'href="{SITE}/files/runs/{run_id}/cache.zip"' in html


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "runs/../../secret.txt",
        "..%2Fsecret.txt",
        "%2E%2E/secret.txt",
        "/etc/passwd",
        "runs/1/../../../secret.txt",
    ],
)
def test_the_files_route_refuses_paths_outside_the_storage(site: Flask, path: str) -> None:
    answer = site.test_client().get(f"/files/{path}", follow_redirects=True)
    assert answer.status_code == 404
    assert b"outside the storage" not in answer.data


def test_no_files_outside_the_embedded_mode(db_url: sa.URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENADDR_EMBEDDED", raising=False)
    monkeypatch.delenv("OA_WEBHOOK_FILES_FOLDER", raising=False)
    app = create_app({"TESTING": True, "DATABASE_URL": db_url.render_as_string(hide_password=False)})
    try:
        assert app.config["FILES_FOLDER"] is None
        assert app.test_client().get("/files/runs/1/index.json").status_code == 404
    finally:
        close_engine(app)


def test_an_unknown_run_is_404(site: Flask) -> None:
    assert site.test_client().get("/runs/999999/").status_code == 404


def test_the_files_view_refuses_a_raw_parent_path(site: Flask) -> None:
    """Past the client's URL normalisation too: the view itself is given ``..``."""
    from werkzeug.exceptions import NotFound

    view = site.view_functions["site.files"]
    with site.test_request_context("/files/x"), pytest.raises(NotFound):
        view(path="../secret.txt")
    with site.test_request_context("/files/x"), pytest.raises(NotFound):
        view(path="runs/../../secret.txt")


def test_pages_are_cached_briefly_and_conditional(site: Flask, fixtures: Path, tmp_path: Path) -> None:
    run_id = publish_park(site, fixtures, tmp_path)
    client = site.test_client()
    page = client.get(f"/runs/{run_id}/")
    assert page.headers["Cache-Control"] == "public, max-age=60"
    assert "Access-Control-Allow-Origin" not in page.headers  # HTML is not shared
    index = client.get(f"/files/runs/{run_id}/index.json")
    assert index.headers["Access-Control-Allow-Origin"] == "*"
    assert client.get("/runs/999999/").headers["Cache-Control"] == "no-store"
    assert client.get("/static/site.css").status_code == 200


def test_latest_runs_are_the_newest_merged_accepted_run_of_each_entry(site: Flask) -> None:
    from openaddr.db.results import latest_runs

    engine = get_engine(site)
    when = db_runs.utcnow()

    def record(
        path: str, *, merged: bool | None, status: bool, warning: str | None = None, age: int = 0
    ) -> int:
        run_id = insert_run(
            engine, source_path=path, source_layer="addresses", layer_name="primary", is_merged=merged
        )
        with engine.begin() as connection:
            connection.execute(
                sa_update(run_id, status=status, warning=warning, datetime_tz=when - dt.timedelta(hours=age))
            )
        return run_id

    old = record("sources/latest-test/a.json", merged=True, status=True, age=3)
    record("sources/latest-test/a.json", merged=False, status=True, age=1)  # a pull request's run: not latest
    record(
        "sources/latest-test/a.json", merged=True, status=True, warning="count fell 50%", age=0
    )  # held by the gate
    failed = record("sources/latest-test/b.json", merged=True, status=False, age=2)
    newer = record("sources/latest-test/b.json", merged=True, status=True, age=1)
    # The PostgreSQL test database is shared: look at this test's entries only.
    mine = [
        run["id"]
        for run in latest_runs(engine)
        if run["source_path"] in ("sources/latest-test/a.json", "sources/latest-test/b.json")
    ]
    assert mine == [old, newer]
    assert [
        run["id"] for run in latest_runs(engine, source_path="sources/latest-test/b.json", successful=True)
    ] == [newer]
    assert failed not in [run["id"] for run in latest_runs(engine)]


def sa_update(run_id: int, **values: object) -> sa.Update:
    import sqlalchemy

    from openaddr.db.schema import runs

    return sqlalchemy.update(runs).where(runs.c.id == run_id).values(**values)


def publish_conformed_park(app: Flask, fixtures: Path, tmp_path: Path) -> int:
    """A real conform of us-wy-park (which draws its preview), published and recorded as ``process_source`` does."""
    from openaddr.process import conform_entry
    from openaddr.sources import load_source

    source = tmp_path / "us-wy-park.json"
    shutil.copy(fixtures / "sources" / "us-wy-park.json", source)
    data = tmp_path / "cache.zip"
    shutil.copy(fixtures / "data" / "us-wy-park.zip", data)
    state_dir = tmp_path / "conformed"
    result = conform_entry(load_source(source).entries()[0], data, state_dir)
    assert result.state["preview"] == "preview.png"
    engine = get_engine(app)
    # A path of its own: the PostgreSQL test database is shared by the session, and a merged run of Park would
    # become other tests' "latest".
    run_id = insert_run(
        engine,
        source_path=f"sources/preview-test/{uuid.uuid4().hex}.json",
        source_layer="addresses",
        layer_name="primary",
        source_data=source.read_bytes(),
    )
    storage = LocalStorage(app.config["FILES_FOLDER"], public_url=f"{SITE}/files")
    storage.publish_run(run_id, state_dir)
    state = json.loads((storage.path(f"runs/{run_id}/index.json")).read_text())
    finish_run(
        engine,
        run_id,
        state=dict(zip(*state, strict=True)),
        attempt_started=db_runs.utcnow(),
        message=db_runs.OK_MESSAGE,
        is_merged=True,
    )
    return run_id


def test_the_run_page_shows_its_preview(site: Flask, fixtures: Path, tmp_path: Path) -> None:
    import io

    from PIL import Image

    run_id = publish_conformed_park(site, fixtures, tmp_path)
    client = site.test_client()
    url = f"{SITE}/files/runs/{run_id}/preview.png"
    html = client.get(f"/runs/{run_id}/").get_data(as_text=True)
    assert f'<img src="{url}" width="1024" height="768"' in html
    assert "No preview" not in html
    image = client.get(f"/files/runs/{run_id}/preview.png")
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (1024, 768)
    # The site's stable URL of the preview (the PR comment's image) redirects to the published file.
    redirect = client.get(f"/runs/{run_id}/preview.png")
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == url
    # The source page shows the latest run's preview.
    path = db_runs.get_run(get_engine(site), run_id)["source_path"]
    source = client.get(f"/sources/{path.removeprefix('sources/').removesuffix('.json')}").get_data(
        as_text=True
    )
    assert f'<img src="{url}" width="512" height="384"' in source


def test_a_run_without_a_preview_says_why(site: Flask, fixtures: Path, tmp_path: Path) -> None:
    run_id = publish_park(site, fixtures, tmp_path)
    engine = get_engine(site)
    with engine.begin() as connection:
        connection.execute(sa_update(run_id, stats={"count": 12, "bounds": None}))
    client = site.test_client()
    html = client.get(f"/runs/{run_id}/").get_data(as_text=True)
    assert "<img" not in html
    assert "No preview: no row has valid coordinates." in html
    missing = client.get(f"/runs/{run_id}/preview.png")
    assert missing.status_code == 404
    assert missing.get_data(as_text=True) == "No preview: no row has valid coordinates."
    assert client.get("/runs/999999/preview.png").status_code == 404


def test_the_index_links_the_collections_it_serves(site: Flask, tmp_path: Path) -> None:
    """Collect into the embedded storage: ``/`` and ``/index.json`` list the zips and the GeoParquet files, and
    their links give the files (``/files/``), which read back."""
    import io

    import pyarrow.parquet as pq

    from openaddr.collect import collect
    from openaddr.db.jobs import complete_set, create_set
    from tests.openaddr.test_collect import ALAMEDA, World

    engine = get_engine(site)
    storage = LocalStorage(site.config["FILES_FOLDER"], public_url=f"{SITE}/files")
    world = World(engine, "", storage, tmp_path)
    set_id = create_set(engine, owner="openaddresses", repository="openaddresses", commit_sha="c" * 40)
    world.run("alameda", "sources/us/ca/alameda.json", ALAMEDA, set_id=set_id, share_alike="true")
    complete_set(engine, set_id)
    collect(engine, storage, "latest", work_dir=tmp_path)
    client = site.test_client()

    body = client.get("/index.json").get_json()
    parquet = body["geoparquet_collections"]["addresses"]["us_west"]["sa"]
    assert parquet["url"] == f"{SITE}/files/collections/openaddr-collected-us_west-sa-addresses.parquet"
    assert parquet["license"] == "Share-Alike Required"
    assert parquet["address_count"] == 3
    assert set(body["geoparquet_collections"]) == {"addresses"}  # the empty files are not listed
    assert set(body["collections"]["us_west"]) == {"sa"}
    html = client.get("/").get_data(as_text=True)
    assert f'<a href="{parquet["url"]}">openaddr-collected-us_west-sa-addresses.parquet</a>' in html
    served = client.get(parquet["url"].removeprefix(SITE))
    assert served.status_code == 200
    assert len(served.data) == parquet["content_length"]
    streets = pq.read_table(io.BytesIO(served.data)).column("street").to_pylist()
    assert sorted(streets) == ["1st St, Rear", "Main St", 'The "Oaks"']
