"""The cache file: its name and type (processing.md §3.4), writing it safely, its fingerprint (§3.5).

:class:`CacheWriter` streams a download to a hidden ``.part`` file in the work directory while it counts bytes
against the size cap, computes the MD5 fingerprint and keeps the first bytes for type sniffing; only a complete
download is renamed to its cache name, and a failed one is deleted. :func:`store_cache` copies the finished file
into the state directory.
"""

from __future__ import annotations

import email.message
import hashlib
import logging
import mimetypes
import os
import posixpath
import re
import shutil
import zipfile
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from openaddr.download import DownloadTooLargeError, EmptyDownloadError, IncompleteDownloadError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from types import TracebackType

    from openaddr.download import StageClock
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: URL extensions that say nothing about the data (§3.4).
UNTRUSTED_EXTENSIONS = frozenset({"", ".cgi", ".php", ".aspx", ".asp", ".do"})
#: MIME types the standard table lacks or maps badly (§3.4). ``application/xml`` is ``.xsl`` in Python's table.
EXTRA_TYPES = {
    "application/x-zip-compressed": ".zip",
    "application/vnd.geo+json": ".json",
    "application/xml": ".xml",
}
#: Types that say nothing about the data: like a missing ``Content-Type``, the first bytes decide.
UNINFORMATIVE_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/download"})
#: Python's built-in MIME table only: ``/etc/mime.types`` would make names differ between machines.
_MIME = mimetypes.MimeTypes()
#: What an extension taken from a URL or header may look like (it names a file in the work directory).
_EXTENSION = re.compile(r"\.[A-Za-z0-9_+-]{1,16}")
#: Bytes of text files (as file(1) judges): printable ASCII, 8-bit bytes, and common control characters.
_TEXT_BYTES = bytes({7, 8, 9, 10, 11, 12, 13, 27} | set(range(0x20, 0x100)) - {0x7F})
_HEAD_SIZE = 512
_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file's bytes (the fingerprint, §3.5)."""
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_part(text: str) -> str:
    """A layer or entry name made safe inside a file name (names come from untrusted sources)."""
    return re.sub(r"[/\\\x00]", "_", text)


def cache_stem(layer: str, name: str, url: str) -> str:
    """``<layer>-<name>-<h>``: ``<h>`` is the first 8 hex digits of SHA-1 over the URL's network location and path
    without extension (§3.4; 7.5.5 hashed ``netloc + path_base`` the same way).

    :param layer: the layer type (``addresses``, …)
    :param name: the entry's unique name
    :param url: the cleaned URL
    """
    parts = urlsplit(url)
    path_base = posixpath.splitext(parts.path)[0]
    digest = hashlib.sha1((parts.netloc + path_base).encode("utf-8")).hexdigest()[:8]
    return f"{_safe_part(layer)}-{_safe_part(name)}-{digest}"


def cache_name(layer: str, name: str, url: str, ext: str) -> str:
    """The cache file name ``<layer>-<name>-<h><ext>`` (§3.4); see :func:`cache_stem`."""
    return cache_stem(layer, name, url) + ext


def url_extension(url: str) -> str | None:
    """The URL path's extension (lower case) when it can be trusted, else None.

    Trusted when the URL has no query and the extension is not ``''``, ``.cgi``, ``.php``, ``.aspx``, ``.asp`` or
    ``.do`` (§3.4), and it looks like a file-name extension at all.
    """
    parts = urlsplit(url)
    if parts.query:
        return None
    segment = unquote(parts.path.rsplit("/", 1)[-1])
    ext = posixpath.splitext(segment)[1].lower()
    if ext in UNTRUSTED_EXTENSIONS or not _EXTENSION.fullmatch(ext):
        return None
    return ext


def content_type_extension(content_type: str | None) -> str | None:
    """The extension a ``Content-Type`` (parameters dropped) maps to, or None (§3.4)."""
    if not content_type:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime or mime in UNINFORMATIVE_TYPES:
        return None
    return EXTRA_TYPES.get(mime) or _MIME.guess_extension(mime)


def disposition_filename(value: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename`` or RFC 2231 ``filename*``), or None."""
    if not value:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = value
    try:
        name = message.get_filename()
    except (ValueError, LookupError):
        return None
    return str(name) if name else None


def sniff_extension(head: bytes) -> str:
    """The extension the first bytes suggest: ``.zip``, ``.gz``, ``.json``, ``.xml``, ``.csv`` (text) or ``.bin``."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return ".zip"
    if head[:2] == b"\x1f\x8b":
        return ".gz"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text[:1] in (b"{", b"["):
        return ".json"
    if text[:1] == b"<":
        return ".xml"
    if head and not head.translate(None, _TEXT_BYTES):
        return ".csv"
    return ".bin"


def choose_extension(url: str, content_type: str | None, disposition: str | None, head: bytes) -> str:
    """The cache file's extension (§3.4).

    The URL's extension when it can be trusted (:func:`url_extension`); else the ``Content-Type``'s
    (:func:`content_type_extension`), unless a ``Content-Disposition`` file name has a different extension; else
    the first bytes decide (:func:`sniff_extension`). A generic ``application/octet-stream`` counts as no type.

    :param url: the requested (cleaned) URL
    :param content_type: the response's ``Content-Type``, or None
    :param disposition: the response's ``Content-Disposition``, or None
    :param head: the first bytes of the (decoded) body
    """
    ext = url_extension(url)
    if ext is not None:
        return ext
    guess = content_type_extension(content_type)
    filename = disposition_filename(disposition)
    if filename is not None and guess is not None:
        header_ext = posixpath.splitext(filename)[1].lower()
        if header_ext != guess:
            log.debug("Content-Disposition names %r but Content-Type says %s", filename, guess)
            guess = None
    return guess or sniff_extension(head)


class CacheWriter:
    """Stream a download into ``work_dir``: size cap, MD5, first bytes, progress; delete it unless finished.

    Use as a context manager; call :meth:`write` per chunk, :meth:`check_complete`, then :meth:`finish` with the
    extension. Leaving the block without :meth:`finish` deletes the partial file.

    :param work_dir: where the cache file goes
    :param stem: its name without extension (:func:`cache_stem`)
    :param settings: ``max_download_bytes`` caps the size
    :param clock: checked on every chunk, so a slow trickle stops at the deadline
    :param progress: called with the number of bytes written so far
    """

    def __init__(
        self,
        work_dir: Path,
        stem: str,
        *,
        settings: Settings,
        clock: StageClock,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.stem = stem
        self.part = work_dir / f".{stem}.part"
        self.path: Path | None = None
        self.size = 0
        self.head = b""
        self._limit = settings.max_download_bytes
        self._clock = clock
        self._progress = progress
        self._digest = hashlib.md5()
        self._fh: Any = None

    def __enter__(self) -> CacheWriter:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._fh = self.part.open("wb")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fh is not None:
            self._fh.close()
        if self.path is None:
            self.part.unlink(missing_ok=True)

    def check_size(self, expected: int | None, url: str) -> None:
        """Refuse at once a download whose announced size is over the cap."""
        if expected is not None and expected > self._limit:
            raise DownloadTooLargeError(
                f"Download too large: {url} announces {expected:,} bytes, more than the {self._limit:,} allowed"
            )

    def write(self, chunk: bytes) -> None:
        """Append a chunk.

        :raises DownloadTooLargeError: more than ``max_download_bytes``
        :raises DownloadTimeoutError: the deadline passed
        """
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self._limit:
            raise DownloadTooLargeError(f"Download too large: more than {self._limit:,} bytes")
        self._fh.write(chunk)
        self._digest.update(chunk)
        if len(self.head) < _HEAD_SIZE:
            self.head += chunk[: _HEAD_SIZE - len(self.head)]
        if self._progress is not None:
            self._progress(self.size)
        self._clock.check()

    def check_complete(self, url: str, expected: int | None = None, received: int | None = None) -> None:
        """Refuse an empty body, or one whose byte count differs from ``Content-Length`` (§3.2).

        :param url: named in the message
        :param expected: the announced length, if any
        :param received: the bytes that length is compared with (default: the bytes written; for a
            Content-Encoding, the bytes received on the wire)
        :raises EmptyDownloadError: no byte
        :raises IncompleteDownloadError: a count that differs from ``expected``
        """
        count = self.size if received is None else received
        if expected is not None and count != expected:
            raise IncompleteDownloadError(
                f"Incomplete download from {url}: {count:,} of {expected:,} bytes received"
            )
        if self.size == 0:
            raise EmptyDownloadError(f"Empty download from {url}")

    @property
    def md5(self) -> str:
        """MD5 hex digest of the bytes written so far."""
        return self._digest.hexdigest()

    def finish(self, ext: str) -> Path:
        """Close the file and give it its cache name ``<stem><ext>``; return that path."""
        self._fh.close()
        target = self.work_dir / f"{self.stem}{ext}"
        os.replace(self.part, target)
        self.path = target
        return target


def store_cache(download_path: Path, state_dir: Path, *, fingerprint: str | None = None) -> tuple[str, str]:
    """Keep the raw download in the state directory as the run's cache (§3.5).

    A zip or gzip file (judged by its first bytes) is copied as ``cache.zip`` or ``cache.gz``; anything else (a CSV,
    a GeoJSON, an ESRI cache CSV) is stored zipped as ``cache.zip`` holding the file under its own name. The
    fingerprint is the MD5 of the raw downloaded bytes either way. Written under a temporary name, then renamed.

    :param download_path: the downloaded cache file
    :param state_dir: the state directory (created if needed)
    :param fingerprint: the download's MD5 if already known
    :return: the cache file's name in ``state_dir`` and the fingerprint
    """
    from openaddr.readers.archives import sniff

    fingerprint = fingerprint or file_md5(download_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    kind = sniff(download_path)
    name = "cache.gz" if kind == "gzip" else "cache.zip"
    temporary = state_dir / f".{name}.tmp"
    try:
        if kind is not None:
            shutil.copyfile(download_path, temporary)
        else:
            with zipfile.ZipFile(
                temporary, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True
            ) as archive:
                archive.write(download_path, arcname=download_path.name)
        os.replace(temporary, state_dir / name)
    finally:
        temporary.unlink(missing_ok=True)
    log.info("Stored %s as %s", download_path.name, name)
    return name, fingerprint


def legacy_cache_url(data: Mapping[str, Any], fingerprint: str) -> str | None:
    """The entry's legacy ``cache`` URL when the state keeps it instead of storing a cache file (§3.5).

    That is when the URL's scheme is ``http`` (not ``https``) and the entry's ``fingerprint`` equals the new
    digest.
    """
    cache = data.get("cache")
    if not isinstance(cache, str) or data.get("fingerprint") != fingerprint:
        return None
    return cache if urlsplit(cache.strip()).scheme == "http" else None
