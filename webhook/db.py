"""The Machine database for the app: one engine per app, one connection per request (flaskr's ``get_db``).

The engine lives in ``app.extensions["openaddr_db"]``, made on first use from ``DATABASE_URL`` with
:func:`openaddr.db.make_engine`, and is disposed when the app goes away (:func:`close_engine`, also called at
interpreter exit); the request's connection is in ``g`` and closed at the end of the request (:func:`close_db`).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from flask import current_app, g

from openaddr.db import make_engine

if TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask

EXTENSION = "openaddr_db"
_lock = threading.Lock()


def get_engine(app: Flask | None = None) -> sa.Engine:
    """The app's engine of the Machine database, created on first use."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    engine = app.extensions.get(EXTENSION)
    if engine is None:
        with _lock:
            engine = app.extensions.get(EXTENSION)
            if engine is None:
                engine = make_engine(app.config["DATABASE_URL"])
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
