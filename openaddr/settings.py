"""Limits and switches of processing, read from ``OPENADDR_*`` environment variables with safe defaults.

Source files come from untrusted pull requests, so the defaults are the production ones: private hosts refused,
``file:`` URLs refused, 180 s network timeouts, two retries after 10 s and 60 s (processing.md §3, §13). Tests
build a :class:`Settings` with tiny delays and timeouts instead, and set ``OPENADDR_ALLOW_PRIVATE_URLS=1`` for
their loopback servers.

Variables (field, default):

* ``OPENADDR_ALLOW_PRIVATE_URLS`` or ``OPENADDR_ALLOW_PRIVATE_HOSTS`` (the spec's name): ``allow_private_hosts``, 0
* ``OPENADDR_ALLOWED_PRIVATE_NETWORKS`` (comma-separated CIDR): ``allowed_private_networks``, none
* ``OPENADDR_ALLOW_FILE_URLS``: ``allow_file_urls``, 0
* ``OPENADDR_CONNECT_TIMEOUT``, ``OPENADDR_READ_TIMEOUT``, ``OPENADDR_FTP_TIMEOUT``: 180 s each
* ``OPENADDR_RETRY_DELAYS`` (comma-separated seconds): ``retry_delays``, ``10,60``
* ``OPENADDR_MAX_RETRY_AFTER``: ``max_retry_after``, 300 s
* ``OPENADDR_TLS_FALLBACK``: ``tls_fallback``, 1
* ``OPENADDR_MAX_REDIRECTS``: ``max_redirects``, 10
* ``OPENADDR_MAX_DOWNLOAD_BYTES``, ``OPENADDR_MAX_DECOMPRESSED_BYTES``: 20 GiB each
* ``OPENADDR_MAX_COMPRESSION_RATIO``: ``max_compression_ratio``, 1000
* ``OPENADDR_DOWNLOAD_TIME_LIMIT``, ``OPENADDR_CONFORM_TIME_LIMIT``: 10800 s (3 h, the default run time limit)
* ``OPENADDR_MAX_RECORD_BYTES``: ``max_record_bytes``, 32 MiB: one GeoJSON feature, CSV line or CSV field
* ``OPENADDR_MAX_JSON_DEPTH``: ``max_json_depth``, 64 nesting levels of a GeoJSON file
* ``OPENADDR_MAX_OUTPUT_BYTES``: ``max_output_bytes``, 100 GiB: the conform's outputs of one layer entry
  (``out.csv``, the zip's CSV counted uncompressed, ``out.geojson``), part files included
* ``OPENADDR_PATTERN_TIMEOUT``: ``pattern_timeout``, 1 s (a source ``regexp`` on one value; > 0, never unbounded)

Booleans accept ``1/0``, ``true/false``, ``yes/no``, ``on/off``; durations are seconds; an empty or ``none`` time
limit means "no limit of its own" (the run's ``deadline`` still applies). A malformed value is an error naming the
variable: a limit silently replaced by its default would hide a configuration mistake.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from openaddr.readers.archives import ArchiveLimits

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

#: The two names of the private-address switch: the issue's and the spec's (processing.md §3.1).
PRIVATE_HOSTS_VARIABLES = ("OPENADDR_ALLOW_PRIVATE_URLS", "OPENADDR_ALLOW_PRIVATE_HOSTS")


@dataclass(frozen=True)
class Settings:
    """Limits and switches of one processing run.

    :param allow_private_hosts: fetch from loopback, private, link-local, … addresses (tests only)
    :param allowed_private_networks: CIDR networks exempt from the private-address guard while the rest of it
        stays on (e.g. ``("127.0.0.0/8",)`` for a loopback replay server, or an internal mirror)
    :param allow_file_urls: copy ``file:`` URLs (tests only; processing.md §3.1)
    :param connect_timeout: seconds to establish a connection
    :param read_timeout: seconds without receiving a byte
    :param ftp_timeout: seconds for any FTP socket operation
    :param retry_delays: seconds to wait before each retry of a transient failure; its length is the number of
        retries
    :param max_retry_after: longest ``Retry-After`` that is honoured, in seconds
    :param tls_fallback: retry once without certificate verification when verification fails (§3.2)
    :param max_redirects: redirects followed per request
    :param max_download_bytes: bytes a download may write (after Content-Encoding is decoded)
    :param max_decompressed_bytes: bytes decompressing one download may write (§4)
    :param max_compression_ratio: bytes written per archive byte before decompression stops (§4)
    :param download_time_limit: seconds the download stage may take, or None (the run's deadline still applies)
    :param conform_time_limit: seconds the conform stage may take, or None
    :param max_record_bytes: bytes (characters for CSV) of one GeoJSON feature, CSV line or CSV field
    :param max_json_depth: nesting levels of a GeoJSON file
    :param max_output_bytes: bytes the conform's outputs of one layer entry may take
    :param pattern_timeout: seconds one source pattern may take on one value (:mod:`openaddr.patterns`)
    """

    allow_private_hosts: bool = False
    allowed_private_networks: tuple[str, ...] = ()
    allow_file_urls: bool = False
    connect_timeout: float = 180.0
    read_timeout: float = 180.0
    ftp_timeout: float = 180.0
    retry_delays: tuple[float, ...] = (10.0, 60.0)
    max_retry_after: float = 300.0
    tls_fallback: bool = True
    max_redirects: int = 10
    max_download_bytes: int = 20 * 2**30
    max_decompressed_bytes: int = 20 * 2**30
    max_compression_ratio: float = 1000.0
    download_time_limit: float | None = 3 * 3600.0
    conform_time_limit: float | None = 3 * 3600.0
    max_record_bytes: int = 32 * 2**20
    max_json_depth: int = 64
    max_output_bytes: int = 100 * 2**30
    pattern_timeout: float = 1.0

    def __post_init__(self) -> None:
        for network in self.allowed_private_networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError on a bad entry

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``OPENADDR_*`` variables (see the module docstring), defaults for the rest.

        :param environ: the variables to read (default: ``os.environ``)
        :raises ValueError: a variable that is set to a malformed value
        """
        env = os.environ if environ is None else environ
        default = cls()
        private = any(_read(env, name, _bool, False) for name in PRIVATE_HOSTS_VARIABLES)
        settings = cls(
            allow_private_hosts=private,
            allowed_private_networks=_read(
                env, "OPENADDR_ALLOWED_PRIVATE_NETWORKS", _networks, default.allowed_private_networks
            ),
            allow_file_urls=_read(env, "OPENADDR_ALLOW_FILE_URLS", _bool, default.allow_file_urls),
            connect_timeout=_read(env, "OPENADDR_CONNECT_TIMEOUT", _seconds, default.connect_timeout),
            read_timeout=_read(env, "OPENADDR_READ_TIMEOUT", _seconds, default.read_timeout),
            ftp_timeout=_read(env, "OPENADDR_FTP_TIMEOUT", _seconds, default.ftp_timeout),
            retry_delays=_read(env, "OPENADDR_RETRY_DELAYS", _delays, default.retry_delays),
            max_retry_after=_read(env, "OPENADDR_MAX_RETRY_AFTER", _seconds, default.max_retry_after),
            tls_fallback=_read(env, "OPENADDR_TLS_FALLBACK", _bool, default.tls_fallback),
            max_redirects=_read(env, "OPENADDR_MAX_REDIRECTS", _count, default.max_redirects),
            max_download_bytes=_read(env, "OPENADDR_MAX_DOWNLOAD_BYTES", _count, default.max_download_bytes),
            max_decompressed_bytes=_read(
                env, "OPENADDR_MAX_DECOMPRESSED_BYTES", _count, default.max_decompressed_bytes
            ),
            max_compression_ratio=_read(
                env, "OPENADDR_MAX_COMPRESSION_RATIO", _seconds, default.max_compression_ratio
            ),
            download_time_limit=_read(
                env, "OPENADDR_DOWNLOAD_TIME_LIMIT", _limit, default.download_time_limit
            ),
            conform_time_limit=_read(env, "OPENADDR_CONFORM_TIME_LIMIT", _limit, default.conform_time_limit),
            max_record_bytes=_read(env, "OPENADDR_MAX_RECORD_BYTES", _count, default.max_record_bytes),
            max_json_depth=_read(env, "OPENADDR_MAX_JSON_DEPTH", _count, default.max_json_depth),
            max_output_bytes=_read(env, "OPENADDR_MAX_OUTPUT_BYTES", _count, default.max_output_bytes),
            pattern_timeout=pattern_timeout(env),
        )
        if settings.allow_private_hosts:
            log.warning("The private-address guard is off: private and loopback hosts may be fetched")
        return settings

    def archive_limits(self) -> ArchiveLimits:
        """The decompression caps (processing.md §4.2) as :class:`~openaddr.readers.archives.ArchiveLimits`."""
        from openaddr.readers.archives import ArchiveLimits

        return ArchiveLimits(
            max_total_bytes=self.max_decompressed_bytes, max_ratio=self.max_compression_ratio
        )


def pattern_timeout(environ: Mapping[str, str] | None = None) -> float:
    """``OPENADDR_PATTERN_TIMEOUT`` alone (the conform reads it without building every other setting).

    :raises ValueError: set, but not a finite number of seconds > 0
    """
    env = os.environ if environ is None else environ
    return _read(env, "OPENADDR_PATTERN_TIMEOUT", _budget, Settings.pattern_timeout)


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: {exc}") from None


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a finite number >= 0")
    return value


def _budget(raw: str) -> float:
    value = _seconds(raw)
    if value == 0:
        raise ValueError("expected a number > 0: a pattern is never unbounded")
    return value


def _limit(raw: str) -> float | None:
    if raw.lower() in ("", "none"):
        return None
    value = _seconds(raw)
    if value == 0:
        raise ValueError("expected a number > 0, or none")
    return value


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _delays(raw: str) -> tuple[float, ...]:
    return tuple(_seconds(part.strip()) for part in raw.split(",") if part.strip())


def _networks(raw: str) -> tuple[str, ...]:
    networks = tuple(part.strip() for part in raw.split(",") if part.strip())
    for network in networks:
        ipaddress.ip_network(network, strict=False)
    return networks
