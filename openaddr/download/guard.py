"""The private-address guard: source URLs come from untrusted pull requests (processing.md §3.1, §13).

A host is refused when **any** address it resolves to is loopback, private, link-local, multicast, reserved,
unspecified, otherwise not globally routable (e.g. the shared 100.64.0.0/10 range), or a cloud metadata address
(``169.254.169.254``, ``fd00:ec2::254``, …). IPv4 addresses embedded in IPv6 (``::ffff:127.0.0.1``, 6to4) are
judged as the IPv4 address they carry. The HTTP client re-checks every redirect and the FTP client every host.

DNS rebinding: a name could resolve to a public address when checked and to a private one when the client
connects. Both clients therefore connect to the very addresses this module checked (:func:`check_host` returns
them): HTTP through a pool keyed by the checked address with the original name kept for ``Host``, SNI and
certificate checks (:mod:`openaddr.download.http`), FTP by connecting to the address. Residual risks: when an
HTTP(S) proxy is configured in the environment the proxy resolves the name itself (the check still ran on our
resolution, but the connection is not pinned), and a name resolved here is trusted for the one request it was
checked for only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from openaddr.download import DownloadConnectionError, PrivateAddressError

if TYPE_CHECKING:
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Instance metadata services (AWS, GCP and Azure share 169.254.169.254; AWS IPv6; AWS ECS; Alibaba). They are
#: refused even inside ``Settings.allowed_private_networks``; only ``allow_private_hosts`` lifts that.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            reason = forbidden_reason(embedded)
            if reason:
                return reason
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for reason, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    ):
        if flag:
            return reason
    return None


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for a TCP connection, in resolver order, without duplicates.

    :raises DownloadConnectionError: the name does not resolve (retried like a connection error)
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DownloadConnectionError(f"Cannot resolve host {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_host(host: str, port: int, *, settings: Settings) -> list[str]:
    """Resolve ``host`` and refuse it when any of its addresses is private (see the module docstring).

    :param host: a host name or IP literal (no brackets)
    :param port: the port to connect to
    :param settings: ``allow_private_hosts`` lifts the guard; ``allowed_private_networks`` exempts networks
    :return: the checked addresses, to connect to
    :raises PrivateAddressError: "Refusing to fetch from a private address"
    :raises DownloadConnectionError: the name does not resolve
    """
    addresses = resolve(host, port)
    if settings.allow_private_hosts:
        return addresses
    allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_private_networks]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = forbidden_reason(address)
        if reason is None:
            continue
        if address not in METADATA_ADDRESSES and any(address in network for network in allowed):
            log.debug("%s resolves to %s, in an allowed private network", host, text)
            continue
        shown = host if host == text else f"{host} resolves to {text}"
        raise PrivateAddressError(f"Refusing to fetch from a private address: {shown} ({reason})")
    return addresses
