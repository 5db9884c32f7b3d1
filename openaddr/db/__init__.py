"""The Machine database: jobs, sets, runs and collection zips (machine-ci.md §7).

PostgreSQL in production, SQLite as the embedded default, one schema for both (:mod:`openaddr.db.schema`), created
and upgraded by the alembic migrations shipped in ``openaddr/db/migrations/`` (:func:`upgrade`). The repository
functions live in :mod:`openaddr.db.jobs` (jobs and sets) and :mod:`openaddr.db.runs` (runs, reuse, messages);
they take a SQLAlchemy :class:`~sqlalchemy.engine.Connection` (or an :class:`~sqlalchemy.engine.Engine`, then
each call is its own transaction). Nothing here imports Airflow: inside tasks the Postgres provider's hook hands
over the URL or engine of the ``openaddr_machine_db`` connection.

Database URLs are always parameters; :func:`default_database_url` gives the one to use when none is named.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.migrate import current_revision, downgrade, head_revision, schema_differences, upgrade

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = [
    "DATABASE_URL_VARIABLE",
    "current_revision",
    "default_database_url",
    "downgrade",
    "head_revision",
    "make_engine",
    "schema_differences",
    "upgrade",
]

#: Environment variable naming the Machine database.
DATABASE_URL_VARIABLE = "OPENADDR_DATABASE_URL"
#: Folder of the embedded database when neither the URL nor ``OPENADDR_HOME`` is set.
DEFAULT_FOLDER = "var"
#: File name of the embedded SQLite database.
SQLITE_NAME = "machine.db"


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """The database to use when none is named.

    ``OPENADDR_DATABASE_URL`` when set (e.g. ``postgresql+psycopg2://postgres@127.0.0.1:5432/openaddr``); else a
    SQLite file ``machine.db`` in ``$OPENADDR_HOME``, else in ``./var/``, as an absolute path so that the URL does
    not change meaning when the working directory does.

    :param env: the environment to read (default: ``os.environ``)
    """
    from openaddr.settings import Settings

    settings = Settings.from_env(env)
    if settings.database_url:
        return settings.database_url
    folder = settings.home or Path.cwd() / DEFAULT_FOLDER
    return f"sqlite:///{(folder / SQLITE_NAME).resolve()}"


def make_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """An engine for the Machine database, with the settings each backend needs.

    SQLite: the parent folder of the file is created, foreign keys are enforced, the journal is in WAL mode (the
    webhook reads while tasks write) and every transaction starts with ``BEGIN IMMEDIATE``, so that concurrent
    writers are serialised for the whole transaction (a job's status is recomputed from what it reads). PostgreSQL:
    connections are checked before use.

    :param url: a SQLAlchemy URL
    :param kwargs: passed on to :func:`sqlalchemy.create_engine`
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, **kwargs)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", 30.0)
    engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (SQLAlchemy's pysqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if database and database != ":memory:":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
