"""The Machine database for the app: one engine per app, one connection per request (flaskr's ``get_db``).

The engine lives in ``app.extensions["openaddr_db"]``, made on first use from ``DATABASE_URL`` with
:func:`openaddr.db.make_engine`, and is disposed when the app goes away (:func:`close_engine`, also called at
interpreter exit); the request's connection is in ``g`` and closed at the end of the request (:func:`close_db`).

A pooled PostgreSQL connection is checked (``SELECT 1``) only when it sat in the pool longer than
:data:`PING_AFTER_IDLE` seconds, not on every request (SQLAlchemy's ``pool_pre_ping``): under load a connection is
back in use within milliseconds, and the ping was a round trip to the server per request for nothing. A connection
that broke meanwhile (the server restarted) fails its first statement; SQLAlchemy then drops it and the pool's
other connections, and ``POST /hook`` retries its first statement once on a new one (:func:`retry_disconnect`).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from flask import current_app, g

from openaddr.db import make_engine

if TYPE_CHECKING:
    from collections.abc import Callable

    from flask import Flask

EXTENSION = "openaddr_db"
#: Seconds a pooled connection may sit unused and still be handed out without a ping.
PING_AFTER_IDLE = 5.0
_IDLE_SINCE = "openaddr_idle_since"
_lock = threading.Lock()
T = TypeVar("T")


def _ping_when_idle(engine: sa.Engine) -> None:
    """Check a pooled connection before use only when it was idle over :data:`PING_AFTER_IDLE` seconds
    (SQLAlchemy's custom pessimistic recipe: a :class:`sqlalchemy.exc.DisconnectionError` makes the pool replace
    it)."""

    @sa.event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return  # new, or back in use at once
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except engine.dialect.loaded_dbapi.Error as error:
            raise sa.exc.DisconnectionError(f"pooled connection is gone: {error}") from error


def get_engine(app: Flask | None = None) -> sa.Engine:
    """The app's engine of the Machine database, created on first use."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    engine = app.extensions.get(EXTENSION)
    if engine is None:
        with _lock:
            engine = app.extensions.get(EXTENSION)
            if engine is None:
                url = sa.make_url(app.config["DATABASE_URL"])
                if url.get_backend_name() == "sqlite":
                    engine = make_engine(url)
                else:
                    engine = make_engine(url, pool_pre_ping=False)
                    _ping_when_idle(engine)
                app.extensions[EXTENSION] = engine
                weakref.finalize(app, engine.dispose)
    return engine


def get_db() -> sa.Connection:
    """This request's connection (no transaction begun)."""
    if "db" not in g:
        g.db = get_engine().connect()
    connection: sa.Connection = g.db
    return connection


def close_db(error: BaseException | None = None) -> None:
    """Close this request's connection, if any (rolling back what was not committed)."""
    connection = g.pop("db", None)
    if connection is not None:
        connection.close()


def close_engine(app: Flask) -> None:
    """Dispose of the app's engine (tests, and shutdown)."""
    engine: Any = app.extensions.pop(EXTENSION, None)
    if engine is not None:
        engine.dispose()


def init_app(app: Flask) -> None:
    """Register the per-request teardown."""
    app.teardown_appcontext(close_db)


def retry_disconnect(read: Callable[[sa.Connection], T]) -> T:
    """``read(connection)`` on this request's connection, once more on a new connection when the first attempt
    found the connection broken (SQLAlchemy has then invalidated it: a server restart since the pool last used it).
    For the request's first statements only, before anything was written."""
    try:
        return read(get_db())
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    close_db()
    return read(get_db())
