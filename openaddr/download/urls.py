"""URL hygiene and the choice of transport (processing.md §3.1).

Source URLs are typed by people: ``corpus/sources/at/31255.json`` has a leading space,
``corpus/sources/us/in/hamilton.json`` a space in its path, ``corpus/sources/pf/countrywide.json`` accented letters,
and two entries name a ``protocol`` their URL's scheme contradicts (``corpus/sources/us/ak/kenai_peninsula_borough.json``,
``corpus/sources/us/mn/mcleod.json``).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, urlsplit, urlunsplit

from openaddr.download import UnsupportedURLError

log = logging.getLogger(__name__)

#: Characters left as they are in a path: RFC 3986 ``pchar`` and ``/``, plus ``%`` of existing escapes.
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
#: ... and in a query, which may also hold ``?``.
_SAFE_QUERY = _SAFE_PATH + "?"
#: ... and in user information, where ``@`` and ``/`` must stay escaped.
_SAFE_USERINFO = "%:!$&'()*+,;=-._~"
#: A ``%`` that starts no escape is itself escaped.
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

#: Transports chosen by URL scheme for ``http`` and ``ftp`` entries.
SCHEME_TRANSPORTS = {"http": "http", "https": "http", "ftp": "ftp", "file": "file"}


def _encode(part: str, safe: str) -> str:
    return quote(_BARE_PERCENT.sub("%25", part), safe=safe)


def clean_url(raw: str) -> str:
    """The URL to request: trimmed, scheme in lower case, host IDNA-encoded, path/query percent-encoded.

    Spaces, non-ASCII characters (as UTF-8) and other characters a URL cannot hold are percent-encoded in the user
    information, path and query; existing escapes are kept; the fragment, never sent, is dropped.

    >>> clean_url(" https://example.com/Address Points/é.zip ")
    'https://example.com/Address%20Points/%C3%A9.zip'

    :raises UnsupportedURLError: no scheme, no host, a bad port or a host name IDNA cannot encode
    """
    text = raw.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        raise UnsupportedURLError(f"Not a URL (no scheme): {text!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsupportedURLError(f"Bad port in {text!r}: {exc}") from None
    host = parts.hostname or ""
    if not host and scheme != "file":
        raise UnsupportedURLError(f"No host name in {text!r}")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsupportedURLError(f"Bad host name in {text!r}: {exc}") from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    if at:
        netloc = f"{_encode(userinfo, _SAFE_USERINFO)}@{netloc}"
    return urlunsplit(
        (scheme, netloc, _encode(parts.path, _SAFE_PATH), _encode(parts.query, _SAFE_QUERY), "")
    )


def url_transport(protocol: str, url: str) -> str:
    """``'http'``, ``'ftp'``, ``'file'`` or ``'esri'``: how to fetch ``url`` for an entry of ``protocol``.

    ``ESRI`` entries always use the feature-service client. For the others the URL scheme wins over a
    contradicting ``protocol``, with a log line (§3.1).

    :param protocol: the entry's ``protocol`` (any case)
    :param url: a cleaned URL (:func:`clean_url`)
    :raises UnsupportedURLError: a scheme that names no transport
    """
    protocol = (protocol or "").lower()
    if protocol == "esri":
        return "esri"
    scheme = urlsplit(url).scheme.lower()
    transport = SCHEME_TRANSPORTS.get(scheme)
    if transport is None:
        raise UnsupportedURLError(f"Unsupported URL scheme {scheme!r} in {redact_url(url)}")
    if transport != "file" and protocol and transport != protocol:
        log.warning(
            "protocol is %r but the URL scheme is %r; downloading with %s",
            protocol,
            scheme,
            transport.upper(),
        )
    return transport


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def host_header(url: str) -> str:
    """The ``Host`` header value of a cleaned URL: host, with the port when it is not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port
    default = {"http": 80, "https": 443, "ftp": 21}.get(parts.scheme)
    return host if port is None or port == default else f"{host}:{port}"
