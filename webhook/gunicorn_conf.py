"""gunicorn settings of the webhook in production, the dev stack and ``make bench-webhook``
(``gunicorn --config python:webhook.gunicorn_conf 'webhook:create_app()'``).

Only a hook: each worker, once it has loaded the app, runs a full collection and moves every object left (the
imported modules, the app, its blueprints and templates: about all a worker holds) into the garbage collector's
permanent generation (:func:`gc.freeze`). The collector then no longer walks them on its full collections, which
otherwise come every few hundred requests and stopped a worker for 30–300 ms each under load (``make bench-webhook
--trace``): the largest single pauses in the webhook's latency tail. Frozen objects are never freed; they live as
long as the worker anyway.
"""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    """After the worker loaded the app: collect, then freeze what survived."""
    gc.collect()
    gc.freeze()
