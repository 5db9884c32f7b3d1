"""Machine database fixtures: a real PostgreSQL test database and SQLite files, migrated by the shipped migrations.

Load with ``pytest_plugins = ["tests.db_fixtures"]``. Fixtures:

* ``postgres_admin_url`` (session): the server's maintenance database, ``OPENADDR_TEST_POSTGRES_URL`` or
  ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres`` (trust authentication, as on the CI machines). When
  the server cannot be reached the tests **fail** with a message saying so: CI has PostgreSQL, and a skipped
  backend would hide exactly the bugs these tests exist for;
* ``postgres_database_url`` (session): a fresh database ``openaddr_test_<random>``, migrated to the head revision,
  dropped at the end of the session;
* ``sqlite_template`` (session): a migrated SQLite file that per-test databases are copied from;
* ``db_url`` (per test, parametrised ``sqlite`` / ``postgresql``): a migrated database for one test — a copy of the
  SQLite template, or the session's PostgreSQL database;
* ``db`` (per test, parametrised): a :class:`~sqlalchemy.engine.Connection` to ``db_url`` inside a transaction
  that is rolled back at the end, so tests on the shared PostgreSQL database do not see each other's rows;
* ``empty_db_url`` (per test, parametrised): a database without any table (a new PostgreSQL database, dropped after
  the test), for the migration tests.

The ``postgresql`` parameters carry the ``integration`` mark.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from openaddr.db import make_engine, upgrade

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ADMIN_URL_VARIABLE = "OPENADDR_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def _admin_engine(admin_url: sa.URL) -> sa.Engine:
    return sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def create_database(admin_url: sa.URL) -> sa.URL:
    """Create an empty database ``openaddr_test_<random>`` on the server; return its URL."""
    name = f"openaddr_test_{secrets.token_hex(6)}"
    engine = _admin_engine(admin_url)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return admin_url.set(database=name)


def drop_database(admin_url: sa.URL, url: sa.URL) -> None:
    """Drop a database made by :func:`create_database`, closing whatever still connects to it."""
    engine = _admin_engine(admin_url)
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> sa.URL:
    """URL of the PostgreSQL server's maintenance database; fails the tests when the server is unreachable."""
    url = sa.make_url(os.environ.get(ADMIN_URL_VARIABLE) or DEFAULT_ADMIN_URL)
    engine = _admin_engine(url)
    error = None
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        error = exc.orig
    finally:
        engine.dispose()
    if error is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)}: {error}\n"
            f"The Machine database tests need a real server (CI has one). Start PostgreSQL with trust "
            f"authentication for user postgres on 127.0.0.1:5432, or set {ADMIN_URL_VARIABLE}.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def postgres_database_url(postgres_admin_url: sa.URL) -> Iterator[sa.URL]:
    """A migrated PostgreSQL database for the whole session, dropped at the end."""
    url = create_database(postgres_admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file to copy."""
    path = tmp_path_factory.mktemp("machine-db") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> sa.URL:
    """A migrated database for one test, on each backend."""
    if request.param == "postgresql":
        url: sa.URL = request.getfixturevalue("postgres_database_url")
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    path = tmp_path / "machine.db"
    shutil.copyfile(template, path)
    return sa.make_url(f"sqlite:///{path}")


@pytest.fixture
def db(db_url: sa.URL) -> Iterator[sa.Connection]:
    """A connection to a migrated database, in a transaction rolled back after the test."""
    engine = make_engine(db_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                yield connection
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.URL]:
    """A database without tables, on each backend."""
    if request.param == "sqlite":
        yield sa.make_url(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    admin_url: sa.URL = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    try:
        yield url
    finally:
        drop_database(admin_url, url)
