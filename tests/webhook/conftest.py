"""Fixtures of the webhook tests: the app on a migrated Machine database (each backend), GitHub on loopback
(``tests/github_server.py``) with a repository of real corpus sources, and Airflow's two REST endpoints on loopback.

The Airflow stand-in is :class:`devstack.fake_airflow.FakeAirflow` (what the webhook calls, shaped like Airflow
3.3.2's answers), with the credentials of ``hooktools``.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from devstack.fake_airflow import FakeAirflow
from tests.webhook.hooktools import (
    AIRFLOW_PASSWORD,
    AIRFLOW_USER,
    BASE_SHA,
    HEAD_SHA,
    OWNER,
    REPO,
    SECRET,
    new_ids,
)
from webhook import create_app
from webhook.db import close_engine

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from flask import Flask
    from flask.testing import FlaskClient

    from tests.github_server import FakeGitHub, FakeRepository


@pytest.fixture(scope="session")
def airflow_server() -> Iterator[FakeAirflow]:
    server = FakeAirflow(AIRFLOW_USER, AIRFLOW_PASSWORD)
    yield server
    server.close()


@pytest.fixture
def fake_airflow(airflow_server: FakeAirflow) -> FakeAirflow:
    airflow_server.reset()
    return airflow_server


def corpus_file(corpus_sources: Path, name: str) -> bytes:
    return (corpus_sources / name).read_bytes()


@pytest.fixture
def repository(fake_github: FakeGitHub, tmp_path: Path, corpus_sources: Path) -> FakeRepository:
    """openaddresses/openaddresses with two commits of real sources: the default branch at ``BASE_SHA``
    (``sources/xx/changed.json``, ``sources/xx/kept.json``) and ``HEAD_SHA`` on a branch, which changes one,
    adds one and a README edit."""
    base, head = tmp_path / "base", tmp_path / "head"
    for folder in (base, head):
        (folder / "sources" / "xx").mkdir(parents=True)
    shutil.copy(corpus_sources / "uy" / "countrywide.json", base / "sources/xx/changed.json")
    shutil.copy(corpus_sources / "sg" / "countrywide.json", base / "sources/xx/kept.json")
    (base / "README.md").write_text("OpenAddresses\n")
    shutil.copytree(base, head, dirs_exist_ok=True)
    shutil.copy(corpus_sources / "uy" / "mo" / "montevideo.json", head / "sources/xx/changed.json")
    shutil.copy(corpus_sources / "pl" / "mazowieckie.json", head / "sources/xx/new.json")
    (head / "README.md").write_text("OpenAddresses, the free and open global address collection\n")
    repo = fake_github.add_repository(OWNER, REPO, base, BASE_SHA)
    repo.add_commit(HEAD_SHA, head, branch="feature", parent=BASE_SHA)
    repo.pulls[7] = {"base": BASE_SHA, "head": HEAD_SHA}
    return repo


@pytest.fixture
def app(
    db_url: sa.URL, fake_github: FakeGitHub, fake_airflow: FakeAirflow, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    for key in ("GITHUB_WEBHOOK_SECRETS", "OPENADDR_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    app = create_app(
        {
            "GITHUB_WEBHOOK_SECRETS": f"old-secret-xyz, {SECRET}",
            "DATABASE_URL": db_url.render_as_string(hide_password=False),
            "GITHUB_TOKEN": "webhook-token",
            "GITHUB_API_URL": fake_github.base_url,
            "BASE_URL": "http://results.test",
            "AIRFLOW_API_URL": fake_airflow.url,
            "AIRFLOW_USERNAME": AIRFLOW_USER,
            "AIRFLOW_PASSWORD": AIRFLOW_PASSWORD,
        }
    )
    yield app
    close_engine(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(autouse=True)
def _fresh_delivery_ids() -> None:
    """Delivery ids unique to each test: PostgreSQL's test database lives for the whole session."""
    new_ids()
