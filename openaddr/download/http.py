"""HTTP(S) downloads (processing.md §3.2).

``GET`` with the project's User-Agent and the entry's ``request.headers`` through the guarded session
(:class:`openaddr.download.session.GuardedSession`: redirects, the private-address guard, pinned connections,
timeouts, the TLS fallback); transient failures retried by the one retry policy (:class:`openaddr.retry.RetryPolicy`,
honouring ``Retry-After`` within the deadline); every final status >= 400 a failure; the body streamed to disk
with a size cap, the deadline checked between reads, and a byte count that differs from ``Content-Length`` refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import urllib3

from openaddr.download import (
    DownloadResult,
    HTTPStatusError,
    IncompleteDownloadError,
    retry_policy,
)
from openaddr.download.cache import CacheWriter, choose_extension
from openaddr.download.session import GuardedSession
from openaddr.download.urls import redact_url
from openaddr.errors import DownloadError
from openaddr.retry import retry_after_seconds

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import requests

    from openaddr.download import StageClock
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Sent with every request (processing.md §3.2).
USER_AGENT = "openaddresses-extract/1.0 (https://github.com/openaddresses/openaddresses)"
#: Headers an entry may not set: they belong to the transport (``Host`` is how a pinned connection is named).
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_READ_SIZE = 256 * 1024


def request_headers(data: Mapping[str, Any]) -> dict[str, str]:
    """The headers of a download: ``User-Agent`` plus the entry's ``request.headers`` (which may replace it).

    Values that are not strings, that hold line breaks, or that name a transport header (``Host``,
    ``Content-Length``, …) are left out with a warning.

    :param data: the layer entry object
    """
    headers = {"User-Agent": USER_AGENT}
    request = data.get("request")
    extra = request.get("headers") if isinstance(request, Mapping) else None
    if not isinstance(extra, Mapping):
        return headers
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            log.warning("Ignoring request header %r: names and values must be strings", key)
        elif key.lower() in _RESERVED_HEADERS:
            log.warning("Ignoring request header %r: it belongs to the transport", key)
        elif any(c in key + value for c in "\r\n\x00") or not key.strip():
            log.warning("Ignoring request header %r: bad characters", key)
        else:
            for existing in [k for k in headers if k.lower() == key.lower()]:
                del headers[existing]
            headers[key] = value
    return headers


def download_http(
    url: str,
    work_dir: Path,
    stem: str,
    *,
    headers: Mapping[str, str],
    settings: Settings,
    clock: StageClock,
    progress: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download ``url`` into ``work_dir/<stem><ext>`` (processing.md §3.2, §3.4).

    :param url: a cleaned ``http``/``https`` URL (:func:`openaddr.download.urls.clean_url`)
    :param work_dir: where the cache file goes
    :param stem: the cache file name without extension (:func:`openaddr.download.cache.cache_stem`)
    :param headers: request headers (:func:`request_headers`)
    :param settings: timeouts, retries, caps, the guard and the TLS fallback switch
    :param clock: the stage's deadline
    :param progress: called with the bytes written so far
    :raises DownloadError: see :mod:`openaddr.download` for the kinds
    """
    with GuardedSession(settings, clock) as session:
        fetch = _Fetch(session, url, work_dir, stem, dict(headers), settings, clock, progress)
        return retry_policy(settings).call(fetch.attempt, deadline=clock)


class _Fetch:
    """One download: :meth:`attempt` is called once per try."""

    def __init__(
        self,
        session: GuardedSession,
        url: str,
        work_dir: Path,
        stem: str,
        headers: dict[str, str],
        settings: Settings,
        clock: StageClock,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.session = session
        self.url = url
        self.work_dir = work_dir
        self.stem = stem
        self.headers = headers
        self.settings = settings
        self.clock = clock
        self.progress = progress

    def attempt(self) -> DownloadResult:
        """One try: ``GET`` (redirects followed by the session), then stream a 2xx body to the cache file."""
        self.clock.check()
        response, current = self.session.request("GET", self.url, headers=self.headers, stream=True)
        with response:
            status = response.status_code
            if not 200 <= status < 300:
                raise HTTPStatusError(
                    status, redact_url(current), retry_after_seconds(response.headers.get("Retry-After"))
                )
            return self.save(response, current)

    def save(self, response: requests.Response, url: str) -> DownloadResult:
        """Stream a 2xx body into the cache file."""
        raw = response.raw
        shown = redact_url(url)
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        length = _content_length(response.headers.get("Content-Length"))
        with CacheWriter(
            self.work_dir, self.stem, settings=self.settings, clock=self.clock, progress=self.progress
        ) as writer:
            if encoding == "identity":
                writer.check_size(length, shown)
            while True:
                self._set_read_timeout(raw)
                try:
                    chunk = raw.read1(_READ_SIZE, decode_content=True)
                except urllib3.exceptions.ReadTimeoutError as exc:
                    if self.clock.expired():
                        raise self.clock.timed_out(f"downloading {shown}") from exc
                    raise IncompleteDownloadError(
                        f"Incomplete download from {shown}: nothing received for "
                        f"{self.settings.read_timeout:g} s after {writer.size:,} bytes"
                    ) from exc
                except urllib3.exceptions.DecodeError as exc:
                    raise DownloadError(f"Cannot decode the {encoding} body from {shown}: {exc}") from exc
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise IncompleteDownloadError(
                        f"Incomplete download from {shown}: connection lost after {writer.size:,} bytes ({exc})"
                    ) from exc
                if not chunk:
                    break
                writer.write(chunk)
            writer.check_complete(shown, length, None if encoding == "identity" else raw.tell())
            content_type = response.headers.get("Content-Type")
            ext = choose_extension(
                self.url, content_type, response.headers.get("Content-Disposition"), writer.head
            )
            path = writer.finish(ext)
        mime = content_type.split(";", 1)[0].strip().lower() if content_type else None
        return DownloadResult(
            path=path,
            fingerprint=writer.md5,
            elapsed=self.clock.elapsed(),
            url=self.url,
            content_type=mime or None,
            size=writer.size,
            final_url=url if url != self.url else None,
        )

    def _set_read_timeout(self, raw: Any) -> None:
        """Shorten the socket's read timeout to end at the deadline (best effort: urllib3 exposes the socket)."""
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.settimeout(self.clock.timeout(self.settings.read_timeout))
            except OSError:
                pass


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None
