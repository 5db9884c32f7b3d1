"""The ArcGIS REST (protocol ``ESRI``) downloader: feature and map service layers to the cache CSV (processing.md §3.6).

:func:`download_esri` checks the endpoint (§3.6.1), reads the metadata and the count (§3.6.2), pages through the
layer with esridump's strategies (§3.6.4), turns each feature into attributes, a centroid and WKT (§3.6.5) and
writes the cache CSV the conform step reads (§3.6.6, byte-exact: the fingerprint and every HASH depend on it).

esridump (openaddresses/pyesridump) does the paging, as in 7.5.5 and batch-machine. :class:`_Dumper` subclasses
its ``EsriDumper`` where the spec asks for more than it does:

* offset paging advances by the features that arrived, not by the page size (servers cap pages below
  ``maxRecordCount``), and a download that ends short of the count fails (openaddresses/openaddresses#7606: batch
  published partial downloads as successes);
* our query parameters win over those of the source URL (esridump lets the URL's win), ``where`` is ANDed;
* every request goes through the guarded session of the downloads (:class:`openaddr.download.session.GuardedSession`:
  the private-address guard, pinned connections, redirects checked hop by hop, the TLS fallback); it has a 300 s
  timeout, stops at the run deadline, and the one retry policy (:class:`openaddr.retry.RetryPolicy`) retries only
  connection errors, timeouts and a 429 or 503 carrying ``Retry-After``: a page answering any other non-200 or a
  JSON ``error`` is a failure at once (esridump retries every error and sleeps between pages);
* envelope boxes that time out are split like boxes that hit the page size;
* features stay in ESRI JSON so that polygon holes go to the shell that contains them (esridump gives them to
  the last shell seen) and features without geometry can fall back to the conform's ``lon``/``lat`` fields.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
import shapely
from esridump.dumper import EsriDumper
from esridump.errors import EsriDownloadError
from esridump.esri2geojson import (
    convert_esri_multipoint,
    convert_esri_point,
    convert_esri_polyline,
    ring_is_clockwise,
)
from shapely.geometry import shape

from openaddr.conform import esri_field_names
from openaddr.download import (
    DownloadConnectionError,
    DownloadResult,
    HTTPStatusError,
    IncompleteDownloadError,
    ResponseTimeoutError,
    StageClock,
)
from openaddr.download.hostlimit import HostLimiter, host_limiter, slot
from openaddr.download.http import request_headers
from openaddr.download.session import GuardedSession, reason
from openaddr.download.urls import clean_url, redact_url
from openaddr.errors import DownloadError, SourceProblem
from openaddr.readers.base import OA_GEOM, OA_X, OA_Y
from openaddr.readers.geometry import centroids, wkt_texts
from openaddr.retry import RetryPolicy, is_retryable, retry_after_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from pathlib import Path

    import requests

    from openaddr.settings import Settings
    from openaddr.sources import LayerEntry

log = logging.getLogger(__name__)

#: The path of an ArcGIS REST layer: ``…/MapServer/<n>`` or ``…/FeatureServer/<n>``, any case (``Mapserver`` in
#: ``corpus/sources/us/ca/lake.json``), optional trailing slash.
LAYER_PATH = re.compile(r"/(?:MapServer|FeatureServer)/\d+/?$", re.IGNORECASE)

#: §3.6.4: answers retried when they carry ``Retry-After`` (any other non-200 page is a failure at once).
_THROTTLE_STATUSES = frozenset({429, 503})
#: §3.6.4: pages hold at most this many features, and 500 when the metadata gives no ``maxRecordCount``.
MAX_PAGE_SIZE = 1000
DEFAULT_RECORD_COUNT = 500
#: §3.6.4: per-request timeout (seconds); a settings object may override it with ``esri_timeout``.
REQUEST_TIMEOUT = 300.0
#: §3.6.4: connection errors and timeouts are retried 5 times with esridump's back-off (10 s × attempt); a
#: settings object may override the delays with ``esri_retry_delays``.
RETRY_DELAYS = (10.0, 20.0, 30.0, 40.0, 50.0)
#: Offset plans dropped (a page of another size than planned) before the rest of a layer is fetched one page at a
#: time: a server that caps pages is learnt at the first; one whose page sizes vary would waste a window each page.
MAX_REPLANS = 3
#: How often an envelope box may be split before its features are taken as they come.
MAX_ENVELOPE_DEPTH = 8

_PAGE_ERROR = "Could not retrieve this chunk of objects"
_TOKEN_MESSAGE = "Token Required"


class EsriTokenRequired(DownloadError):
    """The layer needs an ArcGIS token we do not have (§3.6.2; ``fixtures/machine/data/us-tx-runnels-metadata.json``).

    Its WARNING line, "Could not download ESRI source data: …", is written by :func:`download_esri`; the generic
    download line must not be written for it (§10.2).
    """

    problem = SourceProblem.no_esri_token


class _ServerError(EsriDownloadError):
    """An answer that is not a usable ArcGIS response: HTTP status, unparsable JSON or a JSON ``error``."""

    def __init__(self, text: str, *, code: Any = None, message: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.message = message


class _Throttled(HTTPStatusError):
    """A 429 or 503 answer with ``Retry-After`` (retried; :attr:`response` is returned once the retries are used up)."""

    def __init__(self, response: requests.Response, url: str, retry_after: float) -> None:
        super().__init__(response.status_code, url, retry_after)
        self.response = response


class _Stopped(EsriDownloadError):
    """A page request not sent because the download already ended."""


class _RequestFailed(EsriDownloadError):
    """Connection errors or timeouts outlasted the retries."""

    def __init__(self, text: str, *, timeout: bool) -> None:
        super().__init__(text)
        self.timeout = timeout


def download_esri(
    entry: LayerEntry,
    work_dir: Path,
    *,
    settings: Settings | None = None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
    limiter: HostLimiter | None = None,
) -> DownloadResult:
    """Download an ESRI layer entry into the cache CSV ``<work_dir>/<layer>-<name>-<h>.csv`` (§3.4, §3.6).

    The token case writes its own WARNING line, "Could not download ESRI source data: Could not retrieve layer
    metadata: Token Required"; the caller must not add the generic download line for it (§10.2).

    :param entry: the layer entry (``data`` is the layer URL; ``conform`` chooses the columns, §3.6.3;
        ``request.headers`` are sent with every request)
    :param work_dir: where the cache file goes (created); an existing cache file of the same name is reused
    :param settings: limits and switches (default: :meth:`Settings.from_env`); ``esri_timeout`` and
        ``esri_retry_delays`` attributes, when a settings object has them, replace the §3.6.4 values
    :param deadline: the run's deadline in seconds since the epoch (``time.time()``), or None
    :param progress: called with the number of bytes of the cache CSV written so far, after every page
    :param limiter: the per-host limit of requests in flight (default: the one ``settings.host_limiter`` names,
        :func:`openaddr.download.hostlimit.host_limiter`); ``settings.esri_concurrency`` requests at most
    :return: the cache file and its fingerprint (``content_type`` None)
    :raises EsriTokenRequired: the layer needs a token (problem ``no_esri_token``)
    :raises HostLimiterUnavailable: the Redis host limiter is configured but cannot be reached
    :raises DownloadError: not a layer URL, a refused host, a failed request or page, a partial download, the
        deadline
    """
    from openaddr.download.cache import cache_stem, file_md5
    from openaddr.settings import Settings

    settings = settings or Settings.from_env()
    clock = StageClock(deadline, settings.download_time_limit)
    raw = entry.data.get("data")
    if isinstance(raw, list):  # the dispatcher said it uses only the first URL
        raw = raw[0] if raw else None
    if not isinstance(raw, str) or not raw.strip():
        raise DownloadError(f"Not an ArcGIS REST layer URL: {raw!r}")
    url = clean_url(raw)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not LAYER_PATH.search(parts.path):
        raise DownloadError(f"Not an ArcGIS REST layer URL: {redact_url(url)}")
    layer_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    # §3.6.1: the URL's own query is sent with every request (corpus/sources/us/la/lafayette.json).
    url_params = dict(parse_qsl(parts.query, keep_blank_values=True))

    path = work_dir / f"{cache_stem(entry.layer, entry.name, url)}.csv"
    if path.is_file():
        log.info("Reusing %s already in the work directory instead of downloading it again", path.name)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        log.info("Downloading ESRI layer %s", _shown(layer_url))
        headers = request_headers(entry.data)
        timeout = float(getattr(settings, "esri_timeout", REQUEST_TIMEOUT))
        if limiter is None:
            # A lease outlives any request: its timeout, every retry's and a margin.
            limiter = host_limiter(settings, lease_seconds=2 * timeout + 60)
        dumper = _Dumper(
            layer_url,
            url_params=url_params,
            headers=headers,
            settings=settings,
            clock=clock,
            limiter=limiter,
            label=entry.label,
        )
        try:
            _download(dumper, entry, path, progress)
        except EsriTokenRequired as exc:
            log.warning("Could not download ESRI source data: %s", exc)
            raise
        except EsriDownloadError as exc:
            raise DownloadError(str(exc)) from exc
        finally:
            dumper.close()
    return DownloadResult(
        path=path,
        fingerprint=file_md5(path),
        elapsed=clock.elapsed(),
        url=url,
        content_type=None,
        size=path.stat().st_size,
    )


def _download(dumper: _Dumper, entry: LayerEntry, path: Path, progress: Callable[[int], None] | None) -> None:
    metadata = dumper.layer_metadata()
    try:
        count: int | None = dumper.get_feature_count()
        log.info("Source has %s rows", count)
    except EsriDownloadError as exc:
        count = None
        log.info("Source does not support feature count (%s)", exc)
    names = esri_field_names(entry.conform, entry.layer)
    if not names:
        names = [f["name"] for f in metadata.get("fields") or [] if isinstance(f, dict) and f.get("name")]
    conform = entry.conform or {}
    lon, lat = conform.get("lon"), conform.get("lat")
    lonlat = (lon, lat) if isinstance(lon, str) and lon and isinstance(lat, str) and lat else None

    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = EsriCsvWriter(fh, names, lonlat=lonlat)
            received = 0
            for features in dumper.pages(metadata, count):
                writer.write_features(features)
                received += len(features)
                if progress is not None:
                    fh.flush()
                    progress(os.fstat(fh.fileno()).st_size)
        if dumper.mode == "offset" and count is not None and received < count:
            # openaddresses/openaddresses#7606: batch marked partial downloads as successes.
            raise DownloadError(f"Partial download: got {received} of {count} features")
        if count is not None and received < count:
            # The other modes: ids may be sparse and counts stale (§3.6.5).
            log.warning("Got %d of %d features (the %s method)", received, count, dumper.mode)
        if writer.skipped:
            log.warning("Skipped %d of %d features without usable geometry", writer.skipped, received)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Downloaded %s ESRI features for file %s", writer.written, path.name)


def _loggable(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Request parameters for the log, with a ``token`` hidden."""
    return {k: "***" if k.lower() == "token" else v for k, v in (params or {}).items()}


def _shown(url: str) -> str:
    """A URL for messages: without its query (it may carry a ``token``) and without a password."""
    parts = urlsplit(url)
    return redact_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


class _Dumper(EsriDumper):
    """esridump's ``EsriDumper`` with the requests, errors and paging of §3.6.4 (see the module docstring).

    Reused from esridump as they are: ``get_metadata``, ``get_feature_count``, ``_find_oid_field_name``,
    ``_get_layer_min_max`` (statistics and the ``returnIdsOnly`` check of min and max), ``_get_layer_oids``,
    ``_fetch_bounded_features`` and ``_split_envelope``.
    """

    def __init__(
        self,
        url: str,
        *,
        url_params: Mapping[str, str],
        headers: Mapping[str, str],
        settings: Settings,
        clock: StageClock,
        limiter: HostLimiter,
        label: str = "",
    ) -> None:
        super().__init__(
            url,
            parent_logger=log,
            extra_query_args=dict(url_params),
            extra_headers=dict(headers),
            timeout=float(getattr(settings, "esri_timeout", REQUEST_TIMEOUT)),
            request_geometry="true",
            outSR="4326",
            geometry_precision=7,
            max_page_size=MAX_PAGE_SIZE,
        )
        self._settings = settings
        self._clock = clock
        self._timeouts = (
            min(settings.connect_timeout, self._http_timeout),
            float(self._http_timeout),
        )
        delays = tuple(float(d) for d in getattr(settings, "esri_retry_delays", RETRY_DELAYS))
        self._policy = RetryPolicy(delays, settings.max_retry_after, name="ESRI request")
        self._retry_timeouts = True
        # Every request is guarded and pinned, redirects included (openaddr.download.session); messages show
        # URLs without their query, which may hold a token. A GuardedSession pins its adapter per request, so
        # each thread that sends has its own.
        self._local = threading.local()
        self._sessions: list[GuardedSession] = []
        self._sessions_lock = threading.Lock()
        self._limiter = limiter
        self._concurrency = settings.esri_concurrency
        parts = urlsplit(url)
        self._host = (
            f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        )
        self._label = label
        #: Set when the download ends early: requests not yet sent are not sent.
        self._stopping = threading.Event()
        #: The paging strategy that ran: ``offset``, ``statistics``, ``oids``, ``envelope`` (or ``empty``).
        self.mode: str | None = None

    @property
    def _session(self) -> GuardedSession:
        session: GuardedSession | None = getattr(self._local, "session", None)
        if session is None:
            session = GuardedSession(self._settings, self._clock, shown=_shown)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close the HTTP sessions."""
        self._stopping.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    # -- requests -----------------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """esridump's one way to the server: the guarded session under the retry policy (§3.6.4).

        Connection errors and timeouts are retried (timeouts not inside :meth:`_no_timeout_retries`), and so is
        a 429 or 503 that carries ``Retry-After``, waiting as it says within the deadline; the last such answer
        is returned for :meth:`_handle_esri_errors` to name. Any other status is returned as it is.
        """
        shown = _shown(url)

        def attempt() -> requests.Response:
            if self._stopping.is_set():
                raise _Stopped("the download has ended")
            # §3.6.4: at most esri_concurrency requests in flight to the host (this process or the fleet, by
            # the limiter); a throttled answer lowers that limit, and the wait before its retry holds no slot.
            with slot(self._limiter, self._host, self._concurrency, self._clock) as held:
                log.debug(
                    "%s %s, args %s", method, shown, _loggable(kwargs.get("params") or kwargs.get("data"))
                )
                response, _ = self._session.request(
                    method,
                    url,
                    headers=kwargs.get("headers") or {},
                    timeout=self._timeouts,
                    params=kwargs.get("params"),
                    data=kwargs.get("data"),
                )
                if response.status_code in _THROTTLE_STATUSES:
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
                    if wait is not None:
                        held.throttled()
                        raise _Throttled(response, shown, wait)
                return response

        def transient(error: BaseException) -> bool:
            if isinstance(error, ResponseTimeoutError):
                return self._retry_timeouts
            return is_retryable(error)

        try:
            return self._policy.call(attempt, transient=transient, deadline=self._clock)
        except _Throttled as exc:
            return exc.response
        except (DownloadConnectionError, IncompleteDownloadError) as exc:
            timed_out = isinstance(exc, ResponseTimeoutError)
            what = "Timeout" if timed_out else "Could not connect"
            detail = reason(exc.__cause__ or exc)
            raise _RequestFailed(f"{what} requesting {shown}: {detail}", timeout=timed_out) from None

    def _build_query_args(self, query_args: dict[str, Any] | None = None) -> dict[str, Any]:
        # §3.6.1: the URL's parameters are sent with every request, ours win on conflict (esridump lets the
        # URL's win), except ``where``, which is combined with ours by AND.
        ours = dict(query_args or {})
        combined = {**self._query_params, **ours}
        theirs = self._query_params.get("where")
        if theirs and ours.get("where"):
            combined["where"] = theirs if ours["where"] == "1=1" else f"({ours['where']}) AND ({theirs})"
        return combined

    def _handle_esri_errors(self, response: requests.Response, error_message: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise _ServerError(f"{error_message}: HTTP {response.status_code} from {_shown(response.url)}")
        try:
            data = response.json()
        except ValueError:
            raise _ServerError(f"{error_message}: response from {_shown(response.url)} is not JSON") from None
        if not isinstance(data, dict):
            raise _ServerError(f"{error_message}: response from {_shown(response.url)} is not a JSON object")
        error = data.get("error")
        if error:
            error = error if isinstance(error, dict) else {"message": str(error)}
            message = str(error.get("message") or "").strip()
            details = error.get("details") or []
            details_text = ", ".join(str(d) for d in details) if isinstance(details, list) else str(details)
            text = " ".join(t for t in (message, details_text.strip()) if t)
            raise _ServerError(f"{error_message}: {text}", code=error.get("code"), message=message)
        return data

    # -- metadata and paging ------------------------------------------------------------------------------------

    def layer_metadata(self) -> dict[str, Any]:
        """The layer metadata (§3.6.2).

        :raises EsriTokenRequired: the server answers ``Token Required`` (code 499)
        :raises EsriDownloadError: any other failure, "Could not retrieve layer metadata: …"
        """
        try:
            return dict(self.get_metadata())
        except _ServerError as exc:
            if exc.message == _TOKEN_MESSAGE or exc.code == 499:
                raise EsriTokenRequired(str(exc)) from None
            raise

    def pages(self, metadata: Mapping[str, Any], count: int | None) -> Iterator[list[dict[str, Any]]]:
        """The features of the layer, page by page, as ESRI JSON (§3.6.4); sets :attr:`mode`.

        :param metadata: the layer metadata
        :param count: the feature count, or None when the server gave none
        :raises DownloadError: a page failed
        :raises EsriDownloadError: no strategy applies (no object-id field, no extent)
        """
        record_count = metadata.get("maxRecordCount")
        if not isinstance(record_count, int) or isinstance(record_count, bool) or record_count <= 0:
            record_count = DEFAULT_RECORD_COUNT
        page_size = min(self._max_page_size, record_count)
        if count == 0:
            self.mode = "empty"
            log.info("The layer has no features")
            return
        if count is not None and _supports_pagination(metadata):
            self.mode = "offset"
            log.info("Paging by offset through %d features, %d at a time", count, page_size)
            yield from self._offset_pages(count, page_size)
            return
        fields = [f for f in metadata.get("fields") or [] if isinstance(f, dict)]
        oid_field = self._find_oid_field_name({**metadata, "fields": fields})
        if not oid_field:
            raise EsriDownloadError("Could not find object ID field name for deduplication")
        wheres = None
        if metadata.get("supportsStatistics"):
            try:
                low, high = self._get_layer_min_max(oid_field)
            except (EsriDownloadError, LookupError, TypeError, ValueError) as exc:
                log.info("Finding max/min from statistics failed (%s); trying OID enumeration", exc)
            else:
                self.mode = "statistics"
                wheres = [
                    f"{oid_field} > {lo} AND {oid_field} <= {min(lo + page_size, high)}"
                    for lo in range(low - 1, high, page_size)
                ]
        if wheres is None:
            try:
                with self._no_timeout_retries():
                    oids = sorted(int(oid) for oid in self._get_layer_oids())
            except (EsriDownloadError, TypeError, ValueError) as exc:
                log.info("Enumerating object ids failed (%s); falling back to envelope queries", exc)
                self.mode = "envelope"
                yield from self._envelope_pages(metadata, oid_field, page_size)
                return
            self.mode = "oids"
            wheres = [
                f"{oid_field} >= {chunk[0]} AND {oid_field} <= {chunk[-1]}"
                for chunk in (oids[i : i + page_size] for i in range(0, len(oids), page_size))
            ]
        log.info("Built %d requests using the %s method", len(wheres), self.mode)
        yield from self._in_order({"where": where} for where in wheres)

    # -- concurrent pages, written in order ---------------------------------------------------------------------

    @property
    def _window(self) -> int:
        """Pages requested but not yet written at most: the reorder buffer (1: one page at a time)."""
        return 1 if self._concurrency == 1 else 2 * self._concurrency

    @contextlib.contextmanager
    def _pool(self) -> Iterator[ThreadPoolExecutor]:
        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="esri-page")
        try:
            yield pool
        finally:
            # Early end (a failed page, the deadline, the consumer stopped): pages not started are dropped, the
            # ones in flight end with their request.
            self._stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._stopping.clear()

    def _in_order(self, pages: Iterable[Mapping[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """The features of each page of ``pages`` (query arguments), fetched ``esri_concurrency`` at a time and
        yielded in their order; at most :attr:`_window` pages requested ahead of the one being written."""
        planned = iter(pages)
        with self._pool() as pool:
            pending: deque[Future[list[dict[str, Any]]]] = deque()
            while True:
                while len(pending) < self._window:
                    args = next(planned, None)
                    if args is None:
                        break
                    pending.append(pool.submit(self._page, args))
                if not pending:
                    return
                yield pending.popleft().result()

    def _offset_pages(self, count: int, page_size: int) -> Iterator[list[dict[str, Any]]]:
        # esridump precomputes offsets in steps of the page size; servers that cap pages below maxRecordCount
        # then lose features between pages. Advance by what arrived, stop at the count or an empty page.
        # Concurrently: pages are planned ahead in steps of the size the last page had; a page of another size
        # than planned (a cap) drops the plan after it and plans again from what arrived, so the pages written
        # are exactly those of the one-at-a-time download. A server whose pages keep changing size would have
        # every plan dropped: after MAX_REPLANS the rest goes one page at a time.
        offset = 0  # of the next page to write
        step = page_size
        planned_to = 0  # the next offset to plan
        window, replans = self._window, 0
        with self._pool() as pool:
            pending: deque[tuple[int, Future[list[dict[str, Any]]]]] = deque()
            while offset < count:
                while len(pending) < window and planned_to < count:
                    args = {"resultOffset": planned_to, "resultRecordCount": page_size, "where": "1=1"}
                    pending.append((planned_to, pool.submit(self._page, args)))
                    planned_to += step
                at, future = pending.popleft()
                if at != offset:  # pragma: no cover - the plan is dropped whenever it stops matching
                    raise AssertionError(f"page at offset {at} planned, {offset} expected")
                features = future.result()
                if not features:
                    break
                yield features
                offset += len(features)
                if len(features) != step and offset < count:
                    for _, dropped in pending:
                        dropped.cancel()
                    pending.clear()
                    step, planned_to = len(features), offset
                    replans += 1
                    if replans == MAX_REPLANS and window > 1:
                        log.info("Pages keep changing size; fetching the rest one at a time")
                        window = 1

    def _page(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        query = self._build_query_args(
            {
                **args,
                "geometryPrecision": self._precision,
                "returnGeometry": self._request_geometry,
                "outSR": self._outSR,
                # §3.6.3: always every field; some servers fail when a field list meets paging (machine#300).
                "outFields": "*",
                "f": "json",
            }
        )
        try:
            response = self._request(
                "POST", self._build_url("/query"), headers=self._build_headers(), data=query
            )
            data = self._handle_esri_errors(response, _PAGE_ERROR)
        except _RequestFailed as exc:
            raise DownloadError(f"{_PAGE_ERROR}: {exc}{self._which(args)}") from None
        except _ServerError as exc:
            raise DownloadError(f"{exc}{self._which(args)}") from None
        features = data.get("features")
        if not isinstance(features, list):
            raise DownloadError(f"{_PAGE_ERROR}: the response holds no features{self._which(args)}")
        return features

    def _which(self, args: Mapping[str, Any]) -> str:
        """`` (<source> <layer>/<name>, offset 2000)``: the entry and the page, for a page's failure."""
        page = f"offset {args['resultOffset']}" if "resultOffset" in args else f"where {args.get('where')}"
        return f" ({self._label}, {page})" if self._label else f" ({page})"

    def _envelope_pages(
        self, metadata: Mapping[str, Any], oid_field: str, page_size: int
    ) -> Iterator[list[dict[str, Any]]]:
        extent = metadata.get("extent")
        if not isinstance(extent, dict):
            raise EsriDownloadError("Could not page by envelope: the metadata has no extent")
        seen: set[Any] = set()
        for features in self._boxes(extent, page_size, 0):
            fresh = []
            for feature in features:
                oid = (feature.get("attributes") or {}).get(oid_field)
                if oid in seen:
                    continue
                seen.add(oid)
                fresh.append(feature)
            if fresh:
                yield fresh

    def _boxes(self, envelope: dict[str, Any], page_size: int, depth: int) -> Iterator[list[dict[str, Any]]]:
        # esridump splits a box that holds page-size features or more; we also split one that times out, and
        # stop splitting at MAX_ENVELOPE_DEPTH (esridump recurses without end on dense spots).
        try:
            with self._no_timeout_retries():
                features = self._fetch_bounded_features(envelope, self._outSR)
        except _RequestFailed as exc:
            if not exc.timeout or depth >= MAX_ENVELOPE_DEPTH:
                raise DownloadError(f"{_PAGE_ERROR}: {exc}") from None
            log.info("Envelope query timed out; splitting the box")
            features = None
        except _ServerError as exc:
            raise DownloadError(f"{_PAGE_ERROR}: {exc}") from None
        except (LookupError, TypeError) as exc:  # esridump reads data["features"] unchecked
            raise DownloadError(f"{_PAGE_ERROR}: the response holds no features ({exc!r})") from None
        if features is not None and (len(features) < page_size or depth >= MAX_ENVELOPE_DEPTH):
            if len(features) >= page_size:
                log.warning("An envelope still holds %d features after %d splits", len(features), depth)
            yield features
            return
        for child in self._split_envelope(envelope):
            yield from self._boxes(child, page_size, depth + 1)

    @contextlib.contextmanager
    def _no_timeout_retries(self) -> Iterator[None]:
        # §3.6.4: a timed-out id list or envelope box has a fallback (envelopes, splitting): take it at once.
        previous, self._retry_timeouts = self._retry_timeouts, False
        try:
            yield
        finally:
            self._retry_timeouts = previous


def _supports_pagination(metadata: Mapping[str, Any]) -> bool:
    advanced = metadata.get("advancedQueryCapabilities")
    return bool(
        metadata.get("supportsPagination")
        or (isinstance(advanced, dict) and advanced.get("supportsPagination"))
    )


# -- features to rows ---------------------------------------------------------------------------------------------


class EsriCsvWriter:
    """Writes features to the cache CSV (§3.6.5, §3.6.6), page by page.

    :param fh: a text file opened with ``encoding="utf-8", newline=""``
    :param names: the attribute columns (§3.6.3); ``OA:x``, ``OA:y``, ``OA:geom`` follow unless already present
    :param lonlat: the conform's ``lon`` and ``lat`` field names, used for features without geometry
    """

    def __init__(self, fh: Any, names: list[str], *, lonlat: tuple[str, str] | None = None) -> None:
        self.header = list(names) + [c for c in (OA_X, OA_Y, OA_GEOM) if c not in names]
        self._oa = (self.header.index(OA_X), self.header.index(OA_Y), self.header.index(OA_GEOM))
        self._lonlat = lonlat
        self._keys: dict[tuple[str, ...], list[str | None]] = {}
        self._writer = csv.writer(fh, dialect="excel")
        self._writer.writerow(self.header)
        #: Rows written and features skipped (no usable geometry).
        self.written = 0
        self.skipped = 0

    def _resolve(self, keys: tuple[str, ...]) -> list[str | None]:
        # §3.6.6: the attribute of that name, exact then case-insensitive (new); None → an empty cell.
        resolved = self._keys.get(keys)
        if resolved is None:
            lowered: dict[str, str] = {}
            for key in keys:
                lowered.setdefault(key.lower(), key)
            oa = set(self._oa)
            resolved = [
                None if i in oa else (name if name in keys else lowered.get(name.lower()))
                for i, name in enumerate(self.header)
            ]
            self._keys[keys] = resolved
        return resolved

    def write_features(self, features: list[dict[str, Any]]) -> None:
        """Write one page of ESRI JSON features; features without usable geometry are counted in :attr:`skipped`."""
        rows = self._point_rows(features)
        if rows is not None:
            self._writer.writerows(rows)
            self.written += len(rows)
            return
        attributes = [f.get("attributes") or {} if isinstance(f, dict) else {} for f in features]
        with np.errstate(invalid="ignore"):  # NaN coordinates are expected here; they are skipped below
            geoms = self._geometries(features, attributes)
            x, y = centroids(geoms)
        usable = ~(np.isnan(x) | np.isnan(y))
        coords, owners = shapely.get_coordinates(geoms, return_index=True)
        if len(coords):
            usable[np.unique(owners[np.isnan(coords).any(axis=1)])] = False
        keep = np.flatnonzero(usable)
        self.skipped += len(features) - len(keep)
        if not len(keep):
            return
        texts = wkt_texts(geoms[keep])
        ix, iy, ig = self._oa
        rows = []
        for i, cx, cy, text in zip(keep.tolist(), x[keep].tolist(), y[keep].tolist(), texts, strict=True):
            attrs = attributes[i]
            row = [attrs.get(k) if k is not None else None for k in self._resolve(tuple(attrs))]
            row[ix] = round(cx, 7)
            row[iy] = round(cy, 7)
            row[ig] = text
            rows.append(row)
        self._writer.writerows(rows)
        self.written += len(rows)

    def _point_rows(self, features: list[Any]) -> list[list[Any]] | None:
        """The rows of a page of plain points, or None when any feature is something else.

        The usual point layer without GEOS: a point's centroid is the point itself and its trimmed WKT is
        ``POINT (<x %.16g> <y %.16g>)``, so the bytes are those of the general path (the tests compare both). A
        page with anything else (no geometry, other types, zero, non-finite or non-numeric coordinates) takes the
        general path whole.
        """
        rows = []
        ix, iy, ig = self._oa
        for feature in features:
            geometry = feature.get("geometry") if isinstance(feature, dict) else None
            if not isinstance(geometry, dict) or "x" not in geometry:
                return None
            px, py = geometry["x"], geometry.get("y")
            # esridump's rule for a point (x and y both truthy), numbers only, finite only.
            if not (px and py and type(px) in _NUMBER_TYPES and type(py) in _NUMBER_TYPES):
                return None
            px, py = float(px), float(py)
            if not (math.isfinite(px) and math.isfinite(py)):
                return None
            attrs = feature.get("attributes") or {}
            if not isinstance(attrs, dict):
                return None
            row = [attrs.get(k) if k is not None else None for k in self._resolve(tuple(attrs))]
            row[ix] = round(px, 7)
            row[iy] = round(py, 7)
            row[ig] = f"POINT ({px:.16g} {py:.16g})"
            rows.append(row)
        return rows

    def _geometries(self, features: list[Any], attributes: list[Mapping[str, Any]]) -> np.ndarray:
        """The shapely geometry of each feature (None where there is none)."""
        geoms = np.empty(len(features), dtype=object)
        points: list[int] = []
        xys: list[tuple[float, float]] = []
        for i, (feature, attrs) in enumerate(zip(features, attributes, strict=True)):
            geometry = feature.get("geometry") if isinstance(feature, dict) else None
            if isinstance(geometry, dict) and "x" in geometry:
                # Fast path for the usual point layer: one vectorised constructor for the page. The rule is
                # esridump's (x and y both truthy); anything unusual takes the general path.
                px, py = geometry["x"], geometry.get("y")
                if px and py and type(px) in _NUMBER_TYPES and type(py) in _NUMBER_TYPES:
                    points.append(i)
                    xys.append((px, py))
                    continue
            geoms[i] = _shape(feature, attrs, self._lonlat)
        if points:
            geoms[points] = shapely.points(np.array(xys, dtype=np.float64))
        return geoms


_NUMBER_TYPES = (int, float)


def _shape(feature: Any, attributes: Mapping[str, Any], lonlat: tuple[str, str] | None) -> Any:
    """A shapely geometry of an ESRI JSON feature, or None (§3.6.5)."""
    geojson = _geojson(feature.get("geometry") if isinstance(feature, dict) else None)
    if geojson is None:
        if lonlat is None:
            return None
        # New: a feature without geometry whose conform lon/lat fields hold numbers becomes that point
        # (corpus/sources/ca/on/peel-region.json, us/al/marshall.json).
        lon, lat = (_number(_lookup(attributes, name)) for name in lonlat)
        return shapely.Point(lon, lat) if lon is not None and lat is not None else None
    try:
        return shape(geojson)
    except (shapely.errors.ShapelyError, TypeError, ValueError, IndexError):
        return None  # a one-point path, 4D coordinates: nothing GEOS can build


def _geojson(geometry: Any) -> dict[str, Any] | None:
    """ESRI JSON geometry → GeoJSON geometry with esridump's rules, except polygons (see :func:`_polygon`)."""
    if not isinstance(geometry, dict) or not geometry:
        return None
    try:
        if "x" in geometry or "y" in geometry:
            result: dict[str, Any] | None = convert_esri_point(geometry)
        elif "points" in geometry:
            result = convert_esri_multipoint(geometry) if geometry["points"] else None
        elif "paths" in geometry:
            result = convert_esri_polyline(geometry) if geometry["paths"] else None
        elif "rings" in geometry:
            result = _polygon(geometry["rings"])
        else:
            result = None
    except (TypeError, LookupError):
        return None
    return result


def _polygon(rings: Any) -> dict[str, Any] | None:
    """Rings → Polygon or MultiPolygon: clockwise rings are shells, counter-clockwise rings holes of the shell
    that contains them (§3.6.5).

    Rings are cleaned as esridump does (fewer than 3 points dropped, open rings closed); coordinate order is kept.
    esridump gives a hole to the last shell before it; we give it to the shell that contains it, falling back to
    the last shell before it when none does.
    """
    clean = [_closed(ring) for ring in rings if _valid_ring(ring)]
    if not clean:
        return None
    if len(clean) == 1:
        return {"type": "Polygon", "coordinates": clean}
    polygons: list[list[list[Any]]] = []
    holes: list[tuple[int, list[Any]]] = []
    for ring in clean:
        if ring_is_clockwise(ring):
            polygons.append([ring])
        else:
            holes.append((len(polygons) - 1, ring))
    if not polygons:
        return None
    shells = [shapely.Polygon(p[0]) for p in polygons] if len(polygons) > 1 and holes else []
    for previous, hole in holes:
        owner = previous
        if shells:
            probe = _inside_point(hole)
            owner = next((i for i, s in enumerate(shells) if probe is not None and s.covers(probe)), previous)
        if owner >= 0:
            polygons[owner].append(hole)
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def _inside_point(ring: list[Any]) -> Any:
    try:
        return shapely.Polygon(ring).representative_point()
    except (shapely.errors.ShapelyError, TypeError, ValueError):
        return None


def _valid_ring(ring: Any) -> bool:
    return isinstance(ring, list) and len(ring) >= 3 and not (len(ring) == 3 and ring[0] == ring[2])


def _closed(ring: list[Any]) -> list[Any]:
    return ring if ring[0] == ring[-1] else [*ring, ring[0]]


def _lookup(attributes: Mapping[str, Any], name: str) -> Any:
    if name in attributes:
        return attributes[name]
    lowered = name.lower()
    return next((v for k, v in attributes.items() if k.lower() == lowered), None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None
