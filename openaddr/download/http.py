"""HTTP(S) downloads (processing.md §3.2).

``GET`` with the project's User-Agent and the entry's ``request.headers``; redirects followed here (at most
``max_redirects``), each hop checked by the private-address guard and connected to the address that was checked;
connect and read timeouts; transient failures retried (:func:`openaddr.download.with_retries`); every final status
>= 400 a failure; one retry without certificate verification when verification fails; the body streamed to disk
with a size cap, the deadline checked between reads, and a byte count that differs from ``Content-Length`` refused.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy

from openaddr.download import (
    DownloadConnectionError,
    DownloadError,
    DownloadResult,
    HTTPStatusError,
    IncompleteDownloadError,
    ResponseTimeoutError,
    UnsupportedURLError,
    with_retries,
)
from openaddr.download.cache import CacheWriter, choose_extension
from openaddr.download.guard import check_host
from openaddr.download.urls import clean_url, host_header, redact_url

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from urllib3.connectionpool import HTTPConnectionPool

    from openaddr.download import StageClock
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Sent with every request (processing.md §3.2).
USER_AGENT = "openaddresses-extract/1.0 (https://github.com/openaddresses/openaddresses)"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Headers an entry may not set: they belong to the transport (``Host`` is how a pinned connection is named).
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
#: Headers dropped when a redirect leaves the host, as browsers and requests do.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
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


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that connects to an address chosen beforehand instead of resolving the host again.

    :attr:`pin` is ``(host, address)`` for the next request: the connection pool is keyed by ``address`` while SNI
    and the certificate check use ``host`` (the ``Host`` header is set by the caller). Requests through a proxy
    are not pinned: the proxy resolves the name (see :mod:`openaddr.download.guard`).
    """

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.pin: tuple[str, str] | None = None

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        proxies: dict[str, str] | None = None,
        cert: str | tuple[str, str] | None = None,
    ) -> HTTPConnectionPool:
        """Like :class:`HTTPAdapter`'s, but keyed by the pinned address."""
        if self.pin is None or select_proxy(str(request.url), proxies or {}):
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        host, address = self.pin
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if host_params["host"] != host:
            raise DownloadError(f"Internal error: connection pinned to {host}, not {host_params['host']}")
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = host
            pool_kwargs["assert_hostname"] = host
        host_params["host"] = address
        return self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)


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
    with requests.Session() as session:
        adapter = PinnedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        fetch = _Fetch(session, adapter, url, work_dir, stem, dict(headers), settings, clock, progress)
        return with_retries(fetch.attempt, settings=settings, clock=clock)


class _Fetch:
    """One download: :meth:`attempt` is called once per try."""

    def __init__(
        self,
        session: requests.Session,
        adapter: PinnedAdapter,
        url: str,
        work_dir: Path,
        stem: str,
        headers: dict[str, str],
        settings: Settings,
        clock: StageClock,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.session = session
        self.adapter = adapter
        self.url = url
        self.work_dir = work_dir
        self.stem = stem
        self.headers = headers
        self.settings = settings
        self.clock = clock
        self.progress = progress

    def attempt(self) -> DownloadResult:
        current, headers = self.url, dict(self.headers)
        for _ in range(self.settings.max_redirects + 1):
            response = self.get(current, headers)
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECT_STATUSES or not location:
                break
            response.close()
            target = clean_url(urljoin(current, location))
            if urlsplit(target).scheme not in ("http", "https"):
                raise UnsupportedURLError(
                    f"Refusing to follow a redirect from {redact_url(current)} to {redact_url(target)}"
                )
            if urlsplit(target).hostname != urlsplit(current).hostname:
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
            log.info(
                "%s response from %s: redirected to %s", response.status_code, current, redact_url(target)
            )
            current = target
        else:
            raise DownloadError(
                f"Too many redirects (more than {self.settings.max_redirects}) from {self.url}"
            )
        with response:
            status = response.status_code
            if not 200 <= status < 300:
                raise HTTPStatusError(
                    status, redact_url(current), _retry_after(response.headers.get("Retry-After"))
                )
            return self.save(response, current)

    def get(self, url: str, headers: dict[str, str]) -> requests.Response:
        """Send one ``GET`` to one of the checked addresses of the URL's host (the first that accepts)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = check_host(host, port, settings=self.settings)
        hop_headers = {**headers, "Host": host_header(url)}
        failure: Exception | None = None
        for address in addresses:
            self.clock.check()
            self.adapter.pin = (host, address)
            try:
                return self.send(url, hop_headers)
            except requests.ConnectionError as exc:
                if not _is_connect_failure(exc):
                    raise self.error(url, exc) from exc
                log.debug("Could not connect to %s at %s: %s", host, address, exc)
                failure = exc
            except requests.RequestException as exc:
                raise self.error(url, exc) from exc
            finally:
                self.adapter.pin = None
        if self.clock.expired():
            raise self.clock.timed_out(f"connecting to {redact_url(url)}")
        raise DownloadConnectionError(f"Could not connect to {redact_url(url)}: {_reason(failure)}")

    def send(self, url: str, headers: dict[str, str]) -> requests.Response:
        """The request itself, with the TLS fallback of §3.2."""
        timeout = (
            self.clock.timeout(self.settings.connect_timeout),
            self.clock.timeout(self.settings.read_timeout),
        )
        options: dict[str, Any] = {
            "headers": headers,
            "stream": True,
            "allow_redirects": False,
            "timeout": timeout,
        }
        try:
            return self.session.get(url, verify=True, **options)
        except requests.exceptions.SSLError as exc:
            if not _is_certificate_error(exc):
                raise
            if not self.settings.tls_fallback:
                raise DownloadError(
                    f"SSL certificate verification failed for {redact_url(url)}: {_reason(exc)}"
                ) from exc
        log.warning("Retrying %s without SSL verification", redact_url(url))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return self.session.get(url, verify=False, **options)

    def error(self, url: str, exc: requests.RequestException) -> DownloadError:
        """The download error for a failed request."""
        shown = redact_url(url)
        if isinstance(exc, requests.ReadTimeout):
            if self.clock.expired():
                return self.clock.timed_out(f"waiting for {shown}")
            return ResponseTimeoutError(
                f"Timed out after {self.settings.read_timeout:g} s waiting for a response from {shown}"
            )
        if isinstance(exc, requests.ConnectionError):
            return DownloadConnectionError(f"Connection to {shown} failed: {_reason(exc)}")
        return DownloadError(f"Request to {shown} failed: {_reason(exc)}")

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


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (``args``, ``reason``, ``__cause__``, ``__context__``), breadth first."""
    seen: list[BaseException] = []
    queue: list[Any] = [exc]
    while queue:
        item = queue.pop(0)
        if not isinstance(item, BaseException) or any(item is s for s in seen) or len(seen) > 20:
            continue
        seen.append(item)
        queue.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return seen


def _is_certificate_error(exc: BaseException) -> bool:
    return any(
        isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e)
        for e in _causes(exc)
    )


def _is_connect_failure(exc: requests.ConnectionError) -> bool:
    """True when the connection was never established (so another address may be tried)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    return any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in _causes(exc))


def _reason(exc: BaseException | None) -> str:
    """The innermost useful text of a wrapped network error."""
    if exc is None:
        return "no address to connect to"
    causes = _causes(exc)
    for cause in reversed(causes):
        if isinstance(cause, (OSError, ssl.SSLError)) and str(cause):
            return str(cause)
    return str(exc)
