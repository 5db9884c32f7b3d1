"""Download one layer entry's data into the work directory (processing.md §3).

:func:`download` is the entry point: it cleans the URL (:mod:`openaddr.download.urls`), picks the transport from the
URL scheme and the entry's ``protocol`` and hands over to :mod:`openaddr.download.http`,
:mod:`openaddr.download.ftp` or the ESRI client (``openaddr.download.esri.download_esri``). Every transport returns a
:class:`DownloadResult` and fails with a :class:`~openaddr.errors.DownloadError` subclass defined here, whose text
is what the state's log records.

This module imports no transport at import time, so the transports (and ``esri.py``) import
:class:`DownloadResult`, the errors, :class:`StageClock` and :func:`retry_policy` from here without cycles.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from openaddr.errors import DownloadError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from openaddr.retry import RetryPolicy
    from openaddr.settings import Settings
    from openaddr.sources import LayerEntry

log = logging.getLogger(__name__)

__all__ = [
    "DownloadConnectionError",
    "DownloadResult",
    "DownloadTimeoutError",
    "DownloadTooLargeError",
    "EmptyDownloadError",
    "FTPReplyError",
    "HTTPStatusError",
    "IncompleteDownloadError",
    "PrivateAddressError",
    "ResponseTimeoutError",
    "StageClock",
    "UnsupportedURLError",
    "download",
    "retry_policy",
]


@dataclass(frozen=True)
class DownloadResult:
    """The downloaded cache file of one layer entry.

    :param path: the file in the work directory, named ``<layer>-<name>-<h><ext>`` (processing.md §3.4)
    :param fingerprint: MD5 hex digest of the file's bytes (§3.5)
    :param elapsed: seconds the download took
    :param url: the cleaned URL that was requested
    :param content_type: the response's ``Content-Type`` without parameters, or None (FTP, ``file:``, ESRI)
    :param size: bytes in the file
    :param final_url: the URL the data finally came from after redirects, when it differs from ``url``
    """

    path: Path
    fingerprint: str
    elapsed: float
    url: str
    content_type: str | None
    size: int
    final_url: str | None = None


class HTTPStatusError(DownloadError):
    """A final HTTP status >= 400 (or a 3xx without a usable ``Location``): "``<code>`` response from ``<url>``".

    :param status: the HTTP status
    :param url: the URL that answered (credentials redacted)
    :param retry_after: seconds the server asked to wait (``Retry-After``), if any
    """

    #: Statuses retried before they become final (processing.md §3.2).
    RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} response from {url}")
        self.status = status
        self.url = url
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True for 429, 500, 502, 503 and 504."""
        return self.status in self.RETRY_STATUSES


class DownloadConnectionError(DownloadError):
    """Could not connect, resolve the host, or get a response in time; retried (§3.2)."""

    retryable = True
    retry_after: float | None = None


class ResponseTimeoutError(DownloadConnectionError):
    """ "Timed out after ``<n>`` s waiting for …": the server sent nothing for ``read_timeout`` seconds; retried."""


class IncompleteDownloadError(DownloadError):
    """ "Incomplete download": the connection dropped or the byte count differs from ``Content-Length``; retried."""

    retryable = True
    retry_after: float | None = None


class EmptyDownloadError(DownloadError):
    """ "Empty download": the server sent no byte."""


class PrivateAddressError(DownloadError):
    """ "Refusing to fetch from a private address" (§3.1)."""


class DownloadTimeoutError(DownloadError):
    """ "Timed out after ``<duration>``": the stage's deadline passed (§13)."""


class DownloadTooLargeError(DownloadError):
    """ "Download too large": more bytes than ``Settings.max_download_bytes``."""


class UnsupportedURLError(DownloadError):
    """A URL that names no usable transport or host (bad scheme, ``file:`` in production, bad host name)."""


class FTPReplyError(DownloadError):
    """An FTP error reply (e.g. 550), named in the message; 421, 425 and 426 are retried (§3.3).

    :param reply: the server's reply line
    :param url: the URL (credentials redacted)
    """

    def __init__(self, reply: str, url: str) -> None:
        super().__init__(f"FTP error from {url}: {reply}")
        self.reply = reply
        self.code = int(reply[:3]) if reply[:3].isdigit() else 0
        self.retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """True for the transient replies 421, 425 and 426."""
        return self.code in (421, 425, 426)


class StageClock:
    """Time bookkeeping of one stage: elapsed time and the effective deadline.

    The effective deadline is the earlier of the run's ``deadline`` and the stage's own time limit.

    :param deadline: the run's deadline in seconds since the epoch (``time.time()``), or None
    :param limit: the stage's time limit in seconds, or None
    """

    def __init__(self, deadline: float | None = None, limit: float | None = None) -> None:
        self.started = time.monotonic()
        candidates = [d for d in (deadline, time.time() + limit if limit else None) if d is not None]
        self.deadline: float | None = min(candidates) if candidates else None

    def elapsed(self) -> float:
        """Seconds since the stage started."""
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without a deadline."""
        return None if self.deadline is None else self.deadline - time.time()

    def timeout(self, seconds: float) -> float:
        """A socket timeout: ``seconds``, shortened so that it ends at the deadline at the latest."""
        remaining = self.remaining()
        return seconds if remaining is None else max(0.001, min(seconds, remaining))

    def expired(self) -> bool:
        """True once the deadline has passed."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def timed_out(self, detail: str = "") -> DownloadTimeoutError:
        """The "Timed out after ``<duration>``" error, to raise."""
        duration = timedelta(seconds=round(self.elapsed()))
        return DownloadTimeoutError(f"Timed out after {duration}" + (f" ({detail})" if detail else ""))

    def check(self, detail: str = "") -> None:
        """Raise :meth:`timed_out` once the deadline has passed."""
        if self.expired():
            raise self.timed_out(detail)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The retry policy of downloads (processing.md §3.2, §3.3): a failure whose ``retryable`` is true (connection
    errors, timeouts, 429, 5xx, the transient FTP replies) is retried after ``settings.retry_delays``, or after the
    server's ``Retry-After`` up to ``settings.max_retry_after``; a wait that would reach the deadline ends the stage
    at once ("Timed out after …"). See :class:`openaddr.retry.RetryPolicy`.
    """
    from openaddr.retry import RetryPolicy

    return RetryPolicy(settings.retry_delays, settings.max_retry_after, name="download")


def download(
    entry: LayerEntry,
    work_dir: Path,
    *,
    settings: Settings | None = None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download the data of one layer entry into ``work_dir`` (processing.md §3).

    :param entry: the layer entry (``protocol``, ``data``, ``request.headers`` are used)
    :param work_dir: where the cache file is written (created if needed)
    :param settings: limits and switches (default: :meth:`Settings.from_env`)
    :param deadline: the run's deadline in seconds since the epoch (``time.time()``); the stage also stops at
        ``settings.download_time_limit``
    :param progress: called with the number of bytes written so far
    :return: the cache file and its fingerprint
    :raises DownloadError: any download failure, with the message the state's log records
    """
    from openaddr.download.cache import cache_stem, url_extension
    from openaddr.download.urls import clean_url, redact_url, url_transport
    from openaddr.settings import Settings

    settings = settings or Settings.from_env()
    clock = StageClock(deadline, settings.download_time_limit)
    data = entry.data.get("data")
    if isinstance(data, list):
        if len(data) > 1:
            log.warning(
                "%s: data is a list; using only its first URL and ignoring %d", entry.label, len(data) - 1
            )
        data = data[0] if data else None
    if not isinstance(data, str) or not data.strip():
        raise UnsupportedURLError(f"{entry.label}: no data URL")
    protocol = str(entry.data.get("protocol") or "").lower()
    work_dir.mkdir(parents=True, exist_ok=True)

    if protocol == "esri":
        from openaddr.download.esri import download_esri

        return download_esri(entry, work_dir, settings=settings, deadline=clock.deadline, progress=progress)

    url = clean_url(data)
    transport = url_transport(protocol, url)
    stem = cache_stem(entry.layer, entry.name, url)
    ext = url_extension(url)
    if ext is not None and (work_dir / f"{stem}{ext}").is_file():
        return _reuse(work_dir / f"{stem}{ext}", url, clock)
    log.info("Downloading %s", redact_url(url))
    if transport == "http":
        from openaddr.download.http import download_http, request_headers

        result = download_http(
            url,
            work_dir,
            stem,
            headers=request_headers(entry.data),
            settings=settings,
            clock=clock,
            progress=progress,
        )
    elif transport == "ftp":
        from openaddr.download.ftp import download_ftp

        result = download_ftp(url, work_dir, stem, settings=settings, clock=clock, progress=progress)
    else:
        result = _copy_file(url, work_dir, stem, settings=settings, clock=clock, progress=progress)
    log.info(
        "Downloaded %s bytes in %s to %s (fingerprint %s)",
        f"{result.size:,}",
        timedelta(seconds=round(result.elapsed)),
        result.path.name,
        result.fingerprint,
    )
    return result


def _reuse(path: Path, url: str, clock: StageClock) -> DownloadResult:
    """A cache file already in the work directory (processing.md §3.4), said in the log."""
    from openaddr.download.cache import file_md5

    log.info("Reusing %s already in the work directory instead of downloading it again", path.name)
    return DownloadResult(
        path=path,
        fingerprint=file_md5(path),
        elapsed=clock.elapsed(),
        url=url,
        content_type=None,
        size=path.stat().st_size,
    )


def _copy_file(
    url: str,
    work_dir: Path,
    stem: str,
    *,
    settings: Settings,
    clock: StageClock,
    progress: Callable[[int], None] | None,
) -> DownloadResult:
    """Copy a ``file:`` URL (tests only; refused unless ``settings.allow_file_urls``)."""
    from pathlib import Path
    from urllib.parse import unquote, urlsplit
    from urllib.request import url2pathname

    from openaddr.download.cache import CacheWriter, choose_extension

    if not settings.allow_file_urls:
        raise UnsupportedURLError(f"Refusing to read a local file: {url} (file URLs are for tests only)")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedURLError(f"Refusing to read a file on another host: {url}")
    source = Path(url2pathname(unquote(parts.path)))
    try:
        # Never read a FIFO or a device: a blocking open of a FIFO waits for a writer, a device never ends.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DownloadError(f"Cannot read {url}: not a regular file")
        os.set_blocking(fd, True)
        with (
            open(fd, "rb") as src,
            CacheWriter(work_dir, stem, settings=settings, clock=clock, progress=progress) as out,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.check_complete(url)
            path = out.finish(choose_extension(url, None, None, out.head))
    except OSError as exc:
        raise DownloadError(f"Cannot read {url}: {exc.strerror or exc}") from exc
    return DownloadResult(
        path=path, fingerprint=out.md5, elapsed=clock.elapsed(), url=url, content_type=None, size=out.size
    )
