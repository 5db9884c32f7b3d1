"""Versioned migrations of the Machine database, run programmatically (alembic, no ``alembic.ini`` needed).

The migration scripts ship inside the package (``openaddr/db/migrations/versions/``); the schema in a database
always comes from them, never from ``metadata.create_all``. Alembic's bookkeeping table is
``openaddr_alembic_version``, so that the Machine database may share a PostgreSQL database with Airflow's metadata,
whose own table is ``alembic_version``.

The alembic command line works too, from the project folder::

    alembic -c openaddr/db/migrations/alembic.ini -x url=sqlite:///var/machine.db upgrade head
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from collections.abc import Iterator

    from alembic.config import Config

log = logging.getLogger(__name__)

#: The folder holding ``env.py`` and ``versions/``.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Alembic's version table (not ``alembic_version``: that is Airflow's).
VERSION_TABLE = "openaddr_alembic_version"

Bind = str | sa.URL | sa.Engine | sa.Connection


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An alembic configuration for the shipped migrations, optionally bound to an open connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    """A connection in a transaction: the caller's own, or a new one committed at the end."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    from openaddr.db import make_engine

    engine = bind if isinstance(bind, sa.Engine) else make_engine(bind)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        if engine is not bind:
            engine.dispose()


def upgrade(bind: Bind, revision: str = "head") -> None:
    """Migrate a database up to ``revision`` (default: the latest), creating the tables on first use.

    :param bind: a database URL, an engine, or a connection (then the caller commits)
    :param revision: an alembic revision id, or ``head``
    """
    from alembic import command

    with _connection(bind) as connection:
        log.info("Upgrading the Machine database %s to %s", _safe_url(connection), revision)
        command.upgrade(alembic_config(connection), revision)


def downgrade(bind: Bind, revision: str = "base") -> None:
    """Migrate a database down to ``revision`` (default: ``base``, dropping every table).

    :param bind: a database URL, an engine, or a connection (then the caller commits)
    :param revision: an alembic revision id, ``-1`` or ``base``
    """
    from alembic import command

    with _connection(bind) as connection:
        log.info("Downgrading the Machine database %s to %s", _safe_url(connection), revision)
        command.downgrade(alembic_config(connection), revision)


def current_revision(bind: Bind) -> str | None:
    """The revision a database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with _connection(bind) as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    """The latest revision of the shipped migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revision 0001
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return head


def schema_differences(bind: Bind) -> list[Any]:
    """Differences between a database and :data:`openaddr.db.schema.metadata`, as alembic's autogenerate sees them.

    Types and server defaults are compared too. An empty list means the migrated schema is the declared one.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from openaddr.db.schema import metadata

    with _connection(bind) as connection:
        context = MigrationContext.configure(
            connection,
            opts={"version_table": VERSION_TABLE, "compare_type": True, "compare_server_default": True},
        )
        return list(compare_metadata(context, metadata))


def _safe_url(connection: sa.Connection) -> str:
    return connection.engine.url.render_as_string(hide_password=True)
