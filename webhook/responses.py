"""What every answer of the results site carries (machine-ci.md §9), and the helpers its routes share.

* CORS: JSON and text answers (``application/json``, ``text/plain``, ``text/csv``) carry
  ``Access-Control-Allow-Origin: *``, as 7.5.5's ``webapi`` did, so other sites' scripts can read ``state.txt`` and
  ``index.json``.
* Caching: a GET of the site is ``Cache-Control: public, max-age=<SITE_MAX_AGE>`` (60 s by default) unless the route set
  its own; ``POST /hook`` and errors are ``no-store``. A route that knows when its data last changed passes that time
  to :func:`conditional`, which sets ``Last-Modified`` and answers ``If-Modified-Since`` with 304. There is no cache
  layer in front of the database (the original's stale "latest" came from cache invalidation bugs).
* Paging: ``?past=<id>&n=<n>`` (:func:`page_args`): a bad value is 400, as in 7.5.5.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from flask import abort, current_app, request

if TYPE_CHECKING:
    from flask import Flask, Response

#: Media types that get CORS headers.
SHARED_TYPES = ("application/json", "text/plain", "text/csv")
#: Items per page of the paginated lists (7.5.5: 25).
PAGE_SIZE = 25
#: The most items a client may ask for in one page.
MAX_PAGE_SIZE = 500


def conditional(response: Response, last_modified: dt.datetime | None) -> Response:
    """Set ``Last-Modified`` and answer a matching ``If-Modified-Since`` with 304 (Werkzeug's conditional logic)."""
    if last_modified is not None:
        if last_modified.tzinfo is None:
            last_modified = last_modified.replace(tzinfo=dt.UTC)
        response.last_modified = last_modified.replace(microsecond=0)
        response.make_conditional(request)
    return response


def page_args(default_size: int = PAGE_SIZE) -> tuple[int | None, int]:
    """``(past, n)`` from the query string: ``past`` an id to list before (None: from the newest), ``n`` the page size.

    :raises werkzeug.exceptions.BadRequest: ``past`` or ``n`` is not a positive integer, or ``n`` is over the cap
    """
    past_text = request.args.get("past")
    size_text = request.args.get("n")
    try:
        past = int(past_text) if past_text not in (None, "") else None
        size = int(size_text) if size_text not in (None, "") else default_size
    except ValueError:
        abort(400, description="past and n must be integers")
    if (past is not None and past < 1) or not 1 <= size <= MAX_PAGE_SIZE:
        abort(400, description=f"past must be positive and n between 1 and {MAX_PAGE_SIZE}")
    return past, size


def add_site_headers(response: Response) -> Response:
    """CORS on JSON and text, and a default ``Cache-Control`` (see the module docstring)."""
    if response.mimetype in SHARED_TYPES:
        response.access_control_allow_origin = "*"
    if "Cache-Control" not in response.headers:
        if (
            request.method in ("GET", "HEAD")
            and response.status_code < 400
            and request.endpoint != "hook.hook"
        ):
            response.cache_control.public = True
            response.cache_control.max_age = int(current_app.config["SITE_MAX_AGE"])
        else:
            response.cache_control.no_store = True
    return response


def init_app(app: Flask) -> None:
    """Register :func:`add_site_headers`."""
    app.after_request(add_site_headers)
