"""Alembic environment of the Machine database.

Run through :func:`openaddr.db.upgrade` (a connection is handed over in ``config.attributes``) or the alembic
command line with ``-x url=<database URL>`` (default: :func:`openaddr.db.default_database_url`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from alembic import context

from openaddr.db.migrate import VERSION_TABLE
from openaddr.db.schema import metadata

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


def _configure_and_run(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: later migrations use batch mode (copy and move) there.
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
        literal_binds=connection is None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    """Run the migrations on the handed-over connection, else on a new engine for the URL."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from openaddr.db import default_database_url, make_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or default_database_url()
    if context.is_offline_mode():
        _configure_and_run(url=url)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as new_connection:
            _configure_and_run(new_connection)
            new_connection.commit()
    finally:
        engine.dispose()


run_migrations()
