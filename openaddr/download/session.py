"""The one guarded HTTP client of the downloads: :class:`GuardedSession` (processing.md §3.1, §3.2, §13).

Both HTTP transports use it, the plain download (:mod:`openaddr.download.http`) and the ArcGIS REST dumper
(:mod:`openaddr.download.esri`). Every request it sends

* follows redirects itself (at most ``Settings.max_redirects``), refusing any scheme but ``http``/``https``,
  dropping credential headers when a hop leaves the host, and turning a ``POST`` answered by 301–303 into a
  ``GET`` without its form, as browsers do;
* checks each hop's host with the private-address guard (:func:`openaddr.download.guard.check_host`; lifted only by
  ``OPENADDR_ALLOW_PRIVATE_URLS`` or ``Settings.allowed_private_networks``) and connects to the very address that
  was checked (:class:`PinnedAdapter`), trying the next checked address when one refuses the connection;
* has a connect and a read timeout, both shortened to end at the stage deadline;
* on a certificate verification error, when ``Settings.tls_fallback`` allows it, is sent again without
  verification with the log line "Retrying ``<url>`` without SSL verification"; later requests of the session to
  that host then go without verification at once;
* fails with the download errors of :mod:`openaddr.download`, whose ``retryable`` says whether
  :class:`openaddr.retry.RetryPolicy` may try again.

Retries are not its business: the callers wrap whole attempts in the one retry policy. Size caps and the
byte-count checks of a streamed body are the caller's (:class:`openaddr.download.cache.CacheWriter`).
"""

from __future__ import annotations

import logging
import re
import ssl
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy

from openaddr.download import (
    DownloadConnectionError,
    IncompleteDownloadError,
    ResponseTimeoutError,
    UnsupportedURLError,
)
from openaddr.download.guard import check_host
from openaddr.download.urls import clean_url, host_header, redact_url
from openaddr.errors import DownloadError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from urllib3.connectionpool import HTTPConnectionPool

    from openaddr.download import StageClock
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Headers dropped when a redirect leaves the host, as browsers and requests do.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


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


class GuardedSession:
    """A requests session whose every request is guarded, pinned, bounded in time and redirected by hand.

    Use it as a context manager (or call :meth:`close`).

    :param settings: the guard, timeouts, ``max_redirects`` and the TLS fallback switch
    :param clock: the stage's deadline; every timeout ends at it at the latest
    :param shown: how a URL appears in messages and logs (default: with its password hidden)
    """

    def __init__(
        self, settings: Settings, clock: StageClock, *, shown: Callable[[str], str] = redact_url
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.shown = shown
        self._adapter = PinnedAdapter()
        self._session = requests.Session()
        self._session.mount("http://", self._adapter)
        self._session.mount("https://", self._adapter)
        #: Hosts whose certificate failed verification: later requests skip it (the fallback said so once).
        self._unverified: set[str] = set()

    def __enter__(self) -> GuardedSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: tuple[float, float] | None = None,
        stream: bool = False,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> tuple[requests.Response, str]:
        """Send ``method`` to ``url`` and follow its redirects; return the final response and its URL.

        Any status but a redirect with a ``Location`` is returned as it is: what a status means is the caller's.

        :param method: ``GET`` or ``POST``
        :param url: a cleaned ``http``/``https`` URL (:func:`openaddr.download.urls.clean_url`)
        :param headers: request headers (``Host`` is set here)
        :param timeout: ``(connect, read)`` seconds; default ``Settings.connect_timeout`` and ``read_timeout``
        :param stream: leave the body unread (the caller streams it and closes the response)
        :param params: query parameters of the first request (a ``Location`` is requested as it is)
        :param data: a form to ``POST``
        :raises PrivateAddressError: a hop's host resolves to a private address
        :raises UnsupportedURLError: a redirect to another scheme
        :raises DownloadError: too many redirects; any failure of a request (see :meth:`send`)
        """
        current, hop_headers, query, form = url, dict(headers), params, data
        for _ in range(self.settings.max_redirects + 1):
            response = self.send(
                method, current, headers=hop_headers, timeout=timeout, stream=stream, params=query, data=form
            )
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response, current
            response.close()
            target = clean_url(urljoin(current, location))
            if urlsplit(target).scheme not in ("http", "https"):
                raise UnsupportedURLError(
                    f"Refusing to follow a redirect from {self.shown(current)} to {self.shown(target)}"
                )
            log.info(
                "%s response from %s: redirected to %s",
                response.status_code,
                self.shown(current),
                self.shown(target),
            )
            query = None
            if response.status_code in (301, 302, 303) and method == "POST":
                method, form = "GET", None
            if urlsplit(target).hostname != urlsplit(current).hostname:
                hop_headers = {k: v for k, v in hop_headers.items() if k.lower() not in CREDENTIAL_HEADERS}
            current = target
        raise DownloadError(
            f"Too many redirects (more than {self.settings.max_redirects}) from {self.shown(url)}"
        )

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: tuple[float, float] | None = None,
        stream: bool = False,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        """One request without following redirects, to one of the checked addresses of the URL's host (the
        first that accepts the connection).

        :raises PrivateAddressError: the host resolves to a private address
        :raises DownloadConnectionError: the host does not resolve, no address accepts, or the connection failed
        :raises ResponseTimeoutError: no answer within the read timeout
        :raises IncompleteDownloadError: the body (read here unless ``stream``) broke off
        :raises DownloadTimeoutError: the deadline passed
        :raises DownloadError: a certificate that fails verification without the fallback, any other failure
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = check_host(host, port, settings=self.settings)
        connect, read = timeout or (self.settings.connect_timeout, self.settings.read_timeout)
        options: dict[str, Any] = {
            "headers": {**headers, "Host": host_header(url)},
            "stream": stream,
            "allow_redirects": False,
            "params": params,
            "data": data,
        }
        failure: Exception | None = None
        for address in addresses:
            self.clock.check()
            self._adapter.pin = (host, address)
            try:
                options["timeout"] = (self.clock.timeout(connect), self.clock.timeout(read))
                return self._verified(method, url, host, options)
            except requests.ConnectionError as exc:
                if not _is_connect_failure(exc):
                    raise self._error(url, exc, read) from exc
                log.debug("Could not connect to %s at %s: %s", host, address, exc)
                failure = exc
            except requests.RequestException as exc:
                raise self._error(url, exc, read) from exc
            finally:
                self._adapter.pin = None
        if self.clock.expired():
            raise self.clock.timed_out(f"connecting to {self.shown(url)}")
        raise DownloadConnectionError(
            f"Could not connect to {self.shown(url)}: {reason(failure)}"
        ) from failure

    def _verified(self, method: str, url: str, host: str, options: dict[str, Any]) -> requests.Response:
        """The request itself, with the TLS fallback of §3.2."""
        if host not in self._unverified:
            try:
                return self._session.request(method, url, verify=True, **options)
            except requests.exceptions.SSLError as exc:
                if not _is_certificate_error(exc):
                    raise
                if not self.settings.tls_fallback:
                    raise DownloadError(
                        f"SSL certificate verification failed for {self.shown(url)}: {reason(exc)}"
                    ) from exc
            # Many public servers have broken chains (the original's behaviour): once is enough to know.
            log.warning("Retrying %s without SSL verification", self.shown(url))
            self._unverified.add(host)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return self._session.request(method, url, verify=False, **options)

    def _error(self, url: str, exc: requests.RequestException, read: float) -> DownloadError:
        """The download error for a failed request."""
        shown = self.shown(url)
        if isinstance(exc, requests.ReadTimeout):
            if self.clock.expired():
                return self.clock.timed_out(f"waiting for {shown}")
            return ResponseTimeoutError(f"Timed out after {read:g} s waiting for a response from {shown}")
        if isinstance(
            exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
        ):
            return IncompleteDownloadError(f"Incomplete response from {shown}: {reason(exc)}")
        if isinstance(exc, requests.ConnectionError):
            return DownloadConnectionError(f"Connection to {shown} failed: {reason(exc)}")
        return DownloadError(f"Request to {shown} failed: {reason(exc)}")


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


#: A ``token`` query parameter inside an error text (requests quotes whole URLs in its messages).
_TOKEN = re.compile(r"(?i)\b(token=)[^&\s'\")]*")


def scrub(text: object) -> str:
    """``text`` with any ``token=`` value hidden (ArcGIS tokens travel in the query)."""
    return _TOKEN.sub(r"\1***", str(text))


def reason(exc: BaseException | None) -> str:
    """The innermost useful text of a wrapped network error, with any ``token=`` value hidden."""
    if exc is None:
        return "no address to connect to"
    causes = _causes(exc)
    for cause in reversed(causes):
        if isinstance(cause, (OSError, ssl.SSLError)) and str(cause):
            return scrub(cause)
    return scrub(exc)
