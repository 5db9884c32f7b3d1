"""The run storage the site reads published files from (a run's sample), one per app.

``RESULTS`` (``OPENADDR_RESULTS``: ``s3://bucket/prefix``, ``file://`` or a folder) names it; in the embedded mode it
defaults to the folder served under ``/files/``. Without one, the routes that read files answer 503 and say which
setting is missing (no silent fallback).
"""

from __future__ import annotations

import threading

from flask import abort, current_app

from openaddr.storage import Storage, open_storage

EXTENSION = "openaddr_storage"
_lock = threading.Lock()


def get_storage() -> Storage:
    """The app's run storage, opened on first use.

    :raises werkzeug.exceptions.ServiceUnavailable: no ``RESULTS`` (``OPENADDR_RESULTS``) is configured
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    storage: Storage | None = app.extensions.get(EXTENSION)
    if storage is None:
        url = app.config.get("RESULTS") or app.config.get("FILES_FOLDER")
        if not url:
            abort(503, description="No run storage: set OPENADDR_RESULTS (s3://bucket/prefix or a folder)")
        with _lock:
            storage = app.extensions.get(EXTENSION)
            if storage is None:
                storage = open_storage(str(url), public_url=app.config.get("RESULTS_PUBLIC_URL"))
                app.extensions[EXTENSION] = storage
    return storage
