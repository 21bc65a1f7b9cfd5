"""SSRF rules for Web Push endpoints, shared by the API (registration) and push (sending).

A Web Push endpoint is a URL chosen by a user that our servers POST to. Only https URLs
on public addresses are accepted; loopback is allowed by a setting for tests and the
demo. The same address rules are applied to the URL (IP literals, at registration and at
send time) and to every address its host resolves to (at send time this runs inside the
HTTP connector, so a DNS answer that changes after registration cannot reach inside).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

MAX_ENDPOINT_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# 64:ff9b::/96 embeds an IPv4 address that a NAT64 gateway connects to.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The WHATWG URL standard: a host whose last label is a number is an IPv4 address, so
# "127.1", "0x7f.1" or "2130706433" must never be treated as a DNS name.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class EndpointRejected(ValueError):
    """The endpoint may not be pushed to; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_public_address(ip: str | IPAddress, allow_loopback: bool) -> bool:
    """True for a globally routable unicast address (loopback only when allowed)."""
    try:
        addr = ip if not isinstance(ip, str) else ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        addr = addr.ipv4_mapped or addr
    if isinstance(addr, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address a gateway would forward to.
        embedded: list[ipaddress.IPv4Address] = []
        if addr.sixtofour is not None:
            embedded.append(addr.sixtofour)
        if addr.teredo is not None:
            embedded.append(addr.teredo[1])
        if addr in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(not is_public_address(v4, allow_loopback=False) for v4 in embedded):
            return False
    if addr.is_loopback:
        return allow_loopback
    return addr.is_global and not (
        addr.is_multicast
        or addr.is_private
        or addr.is_reserved
        or addr.is_link_local
        or addr.is_unspecified
    )


def _is_localhost_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_webpush_endpoint(url: str, allow_loopback: bool) -> str:
    """Check an endpoint without any I/O; return it unchanged or raise EndpointRejected."""
    if len(url) > MAX_ENDPOINT_LENGTH:
        raise EndpointRejected("too_long", f"endpoint longer than {MAX_ENDPOINT_LENGTH}")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise EndpointRejected("malformed", "endpoint contains spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        raise EndpointRejected("malformed", "endpoint is not a valid URL") from None
    if parts.scheme.lower() != "https":
        raise EndpointRejected("scheme", "endpoint must be an https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EndpointRejected("userinfo", "endpoint must not contain credentials")
    if not host:
        raise EndpointRejected("no_host", "endpoint has no host")
    check_host(host, allow_loopback)
    return url


def check_host(host: str, allow_loopback: bool) -> None:
    """The host part alone: a public IP literal, or a name that is not localhost."""
    addr = _literal(host)
    if addr is not None:
        if not is_public_address(addr, allow_loopback):
            raise EndpointRejected("address_not_public", f"{host} is not a public address")
        return
    if _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
        raise EndpointRejected("ip_not_canonical", f"{host} is not a canonical IPv4 address")
    if _is_localhost_name(host) and not allow_loopback:
        raise EndpointRejected("address_not_public", f"{host} is a loopback name")


async def resolve_public(host: str, port: int, allow_loopback: bool) -> list[str]:
    """Resolve `host`; every address must be public, else EndpointRejected.

    All addresses are checked, not just one: a connector may try any of them.
    """
    host = host.strip("[]")
    check_host(host, allow_loopback)
    if _literal(host) is not None:
        return [host]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointRejected("unresolvable", f"{host} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise EndpointRejected("unresolvable", f"{host} has no address")
    for address in addresses:
        if not is_public_address(address, allow_loopback):
            raise EndpointRejected(
                "address_not_public", f"{host} resolves to {address}, not a public address"
            )
    return addresses
