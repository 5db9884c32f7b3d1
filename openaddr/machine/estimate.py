"""What an entry will cost, known before downloading it: the first night's grouping (issue 15, machine-ci.md §6).

An entry without a previous run time is estimated, cheaply and within a bound, from:

* **the corpus's own hints**: ``conform.size: large`` (never grouped: its own tier), a ``timeout`` over the default
  (its author expects it to be slow);
* **ArcGIS**: the layer's feature count (``query?where=1=1&returnCountOnly=true``, what the download asks first);
* **HTTP(S)**: ``Content-Length`` of a ``HEAD`` request (redirects followed, every hop through the private-address
  guard, as the download does).

Each request has :data:`ESTIMATE_TIMEOUT` seconds, the whole set :data:`ESTIMATE_BUDGET` seconds with
:data:`ESTIMATE_WORKERS` requests at a time; an entry that gets no answer (FTP, a server without a count or a
``Content-Length``, an error, the budget spent) is **unknown**: logged with the reason, and given a task of its own,
as every entry was on the first night before. That is the documented mode, not a fallback: an unknown entry costs
one Airflow task, nothing more.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from openaddr.machine.entries import LARGE, entry_size

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Seconds each estimate request may take (connect and read).
ESTIMATE_TIMEOUT = 5.0
#: Seconds all the estimates of one planning may take together; entries not estimated by then are unknown.
ESTIMATE_BUDGET = 120.0
#: Estimate requests at a time.
ESTIMATE_WORKERS = 8
#: How a size turns into seconds, the rates of a small entry on the development machine with margin: the fixed
#: cost of a run, then a download + conform rate for a file and a page rate (1,000 features, ~1 s) for ArcGIS.
BASE_SECONDS = 2.0
BYTES_PER_SECOND = 1_000_000.0
FEATURES_PER_SECOND = 1_000.0
#: The default entry deadline in seconds: an entry whose source asks for more expects to be slow.
_DEFAULT_TIMEOUT = 3 * 3600.0


@dataclass(frozen=True)
class Estimate:
    """An entry's expected seconds, or None when unknown, and what it was based on (for the log)."""

    seconds: float | None
    basis: str


def estimate_entries(
    entries: Iterable[Mapping[str, Any]],
    *,
    settings: Settings | None = None,
    timeout: float = ESTIMATE_TIMEOUT,
    budget: float = ESTIMATE_BUDGET,
    workers: int = ESTIMATE_WORKERS,
) -> dict[str, Estimate]:
    """Estimate planned entries (:meth:`~openaddr.machine.PlannedEntry.to_dict` plus their ``data``, the layer
    entry object): ``label`` → :class:`Estimate`.

    :param entries: ``{"label", "size", "timeout", "data"}`` each
    """
    from openaddr.settings import Settings

    settings = settings or Settings.from_env()
    # Short limits, no retries: an estimate is worth a few seconds, never a download's patience.
    quick = cast("Settings", _Quick(settings, timeout))
    found: dict[str, Estimate] = {}
    asked: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        hint = _hint(entry)
        if hint is not None:
            found[entry["label"]] = hint
        else:
            asked[entry["label"]] = entry
    ends = time.time() + budget
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="estimate")
    try:
        futures = {pool.submit(_ask, entry, quick, ends): label for label, entry in asked.items()}
        try:
            for future in concurrent.futures.as_completed(futures, timeout=max(0.0, ends - time.time())):
                found[futures[future]] = future.result()
        except concurrent.futures.TimeoutError:
            pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for label in asked:
        if label not in found:
            found[label] = Estimate(None, f"no answer within the {budget:g} s estimate budget")
    unknown = [label for label, estimate in found.items() if estimate.seconds is None]
    for label in unknown:
        log.info("%s: unknown cost (%s): a task of its own", label, found[label].basis)
    log.info("Estimated %d entries before downloading: %d unknown", len(found), len(unknown))
    return found


class _Quick:
    """The settings with the estimate's limits: its timeout for connect, read and an ArcGIS request; no retries."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self._settings = settings
        self.connect_timeout = self.read_timeout = self.esri_timeout = timeout
        self.retry_delays: tuple[float, ...] = ()
        self.esri_retry_delays: tuple[float, ...] = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


def _hint(entry: Mapping[str, Any]) -> Estimate | None:
    data = entry.get("data") or {}
    if entry.get("size") == LARGE or entry_size(data) == LARGE:
        return Estimate(None, "conform.size is large")
    timeout = entry.get("timeout")
    if isinstance(timeout, (int, float)) and timeout > _DEFAULT_TIMEOUT:
        return Estimate(None, f"its timeout is {timeout / 3600:g} hours")
    protocol = str(data.get("protocol") or "").lower()
    url = data.get("data")
    if isinstance(url, list):
        url = url[0] if url else None
    if not isinstance(url, str) or urlsplit(url.strip()).scheme.lower() not in ("http", "https"):
        return Estimate(None, f"nothing to ask before downloading ({protocol or 'no'} protocol)")
    return None


def _ask(entry: Mapping[str, Any], settings: Settings, ends: float) -> Estimate:
    from openaddr.download import StageClock
    from openaddr.errors import DownloadError

    data = entry["data"]
    clock = StageClock(ends)
    try:
        if str(data.get("protocol") or "").lower() == "esri":
            return _esri_count(data, settings, clock)
        return _content_length(data, settings, clock)
    except DownloadError as exc:
        return Estimate(None, f"estimate failed: {exc}")
    except Exception as exc:  # a hostile server's answer must never stop the planning
        return Estimate(None, f"estimate failed: {type(exc).__name__}: {exc}")


def _content_length(data: Mapping[str, Any], settings: Settings, clock: Any) -> Estimate:
    from openaddr.download.http import request_headers
    from openaddr.download.session import GuardedSession
    from openaddr.download.urls import clean_url

    url = data["data"][0] if isinstance(data["data"], list) else data["data"]
    with GuardedSession(settings, clock) as session:
        response, _ = session.request(
            "HEAD", clean_url(url), headers=request_headers(data), timeout=(settings.connect_timeout,) * 2
        )
        response.close()
    length = response.headers.get("Content-Length")
    if response.status_code != 200 or length is None or not length.strip().isdigit():
        return Estimate(None, f"HEAD answered {response.status_code} without a Content-Length")
    size = int(length)
    return Estimate(BASE_SECONDS + size / BYTES_PER_SECOND, f"Content-Length {size:,} bytes")


def _esri_count(data: Mapping[str, Any], settings: Settings, clock: Any) -> Estimate:
    from openaddr.download.esri import _Dumper
    from openaddr.download.hostlimit import host_limiter
    from openaddr.download.http import request_headers
    from openaddr.download.urls import clean_url

    url = data["data"][0] if isinstance(data["data"], list) else data["data"]
    parts = urlsplit(clean_url(url))
    layer_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    dumper = _Dumper(
        layer_url,
        url_params=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=request_headers(data),
        settings=settings,
        clock=clock,
        # the estimate's request counts against the host's limit like a download's (a lease outlives its timeout)
        limiter=host_limiter(settings, lease_seconds=2 * ESTIMATE_TIMEOUT + 60),
    )
    try:
        count = int(dumper.get_feature_count())
    finally:
        dumper.close()
    return Estimate(BASE_SECONDS + count / FEATURES_PER_SECOND, f"ArcGIS count {count:,} features")
