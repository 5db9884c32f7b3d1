"""FTP downloads (processing.md §3.3).

``ftplib``: anonymous login unless the URL carries a user (and password), passive mode, binary ``RETR`` of the
percent-decoded path, ``ftp_timeout`` on every socket operation. The host is checked by the private-address guard
and the control connection goes to the checked address; ``ftplib`` opens passive data connections to the control
connection's peer, never to an address the server names (``FTP.trust_server_pasv_ipv4_address`` is false), so a
hostile server cannot point them elsewhere. Any error reply is a failure naming it; connection errors and the
transient replies 421, 425 and 426 are retried.
"""

from __future__ import annotations

import ftplib
import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from openaddr.download import (
    DownloadConnectionError,
    DownloadResult,
    FTPReplyError,
    ResponseTimeoutError,
    UnsupportedURLError,
    retry_policy,
)
from openaddr.download.cache import CacheWriter, choose_extension
from openaddr.download.guard import check_host
from openaddr.download.urls import redact_url

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from openaddr.download import StageClock
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

_BLOCK_SIZE = 256 * 1024
#: What ``ftplib`` raises for a reply it does not like.
_REPLY_ERRORS = (ftplib.error_reply, ftplib.error_temp, ftplib.error_perm, ftplib.error_proto)


def download_ftp(
    url: str,
    work_dir: Path,
    stem: str,
    *,
    settings: Settings,
    clock: StageClock,
    progress: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Download an ``ftp://`` URL into ``work_dir/<stem><ext>`` (processing.md §3.3, §3.4).

    :param url: a cleaned ``ftp`` URL (:func:`openaddr.download.urls.clean_url`)
    :param work_dir: where the cache file goes
    :param stem: the cache file name without extension
    :param settings: timeout, retries, caps and the guard
    :param clock: the stage's deadline
    :param progress: called with the bytes written so far
    :raises DownloadError: see :mod:`openaddr.download` for the kinds
    """
    parts = urlsplit(url)
    path = unquote(parts.path)
    if not parts.hostname or path in ("", "/"):
        raise UnsupportedURLError(f"No file to fetch in {redact_url(url)}")
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
    else:
        user, password = "anonymous", "anonymous@"
    transfer = _Transfer(
        url, parts.hostname, parts.port or 21, user, password, path, work_dir, stem, settings, clock, progress
    )
    return retry_policy(settings).call(transfer.attempt, deadline=clock)


class _Transfer:
    """One FTP download: :meth:`attempt` is called once per try."""

    def __init__(
        self,
        url: str,
        host: str,
        port: int,
        user: str,
        password: str,
        path: str,
        work_dir: Path,
        stem: str,
        settings: Settings,
        clock: StageClock,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.url = url
        self.shown = redact_url(url)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.path = path
        self.work_dir = work_dir
        self.stem = stem
        self.settings = settings
        self.clock = clock
        self.progress = progress

    def attempt(self) -> DownloadResult:
        addresses = check_host(self.host, self.port, settings=self.settings)
        ftp = self.connect(addresses)
        try:
            return self.fetch(ftp)
        except _REPLY_ERRORS as exc:
            raise FTPReplyError(str(exc).strip() or type(exc).__name__, self.shown) from exc
        except ValueError as exc:  # ftplib refuses a command with a line break (a %0A in the path)
            raise UnsupportedURLError(f"Bad FTP path in {self.shown}: {exc}") from exc
        except TimeoutError as exc:
            if self.clock.expired():
                raise self.clock.timed_out(f"downloading {self.shown}") from exc
            raise ResponseTimeoutError(
                f"Timed out after {self.settings.ftp_timeout:g} s waiting for {self.shown}"
            ) from exc
        except (OSError, EOFError) as exc:
            raise DownloadConnectionError(f"FTP connection to {self.shown} failed: {exc}") from exc
        finally:
            ftp.close()

    def connect(self, addresses: list[str]) -> ftplib.FTP:
        """Log in at the first checked address that accepts a connection."""
        failure: BaseException | None = None
        for address in addresses:
            self.clock.check()
            ftp = ftplib.FTP(timeout=self.clock.timeout(self.settings.ftp_timeout))
            try:
                ftp.connect(address, self.port)
                ftp.login(self.user, self.password)
            except _REPLY_ERRORS as exc:
                ftp.close()
                raise FTPReplyError(str(exc).strip(), self.shown) from exc
            except (OSError, EOFError) as exc:
                ftp.close()
                log.debug("Could not connect to %s at %s: %s", self.host, address, exc)
                failure = exc
                continue
            return ftp
        if self.clock.expired():
            raise self.clock.timed_out(f"connecting to {self.shown}")
        raise DownloadConnectionError(f"Could not connect to {self.shown}: {failure or 'no address'}")

    def fetch(self, ftp: ftplib.FTP) -> DownloadResult:
        """Binary ``RETR`` of the path into the cache file."""
        ftp.set_pasv(True)
        ftp.voidcmd("TYPE I")
        try:
            expected = ftp.size(self.path)
        except _REPLY_ERRORS:
            expected = None  # SIZE is an extension; a missing file fails at RETR with its own reply
        with CacheWriter(
            self.work_dir, self.stem, settings=self.settings, clock=self.clock, progress=self.progress
        ) as writer:
            writer.check_size(expected, self.shown)
            ftp.retrbinary(f"RETR {self.path}", writer.write, blocksize=_BLOCK_SIZE)
            writer.check_complete(self.shown, expected)
            path = writer.finish(choose_extension(self.url, None, None, writer.head))
        try:
            ftp.quit()
        except (*_REPLY_ERRORS, OSError, EOFError):
            pass
        return DownloadResult(
            path=path,
            fingerprint=writer.md5,
            elapsed=self.clock.elapsed(),
            url=self.url,
            content_type=None,
            size=writer.size,
        )
