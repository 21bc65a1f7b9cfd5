"""Where a service answers: host:port endpoints, URL parsing and masking, and protocol
probes that only the real server passes."""

from __future__ import annotations

import re
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from .config import StackError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    unix_socket: str | None = None  # libpq ?host=/dir URLs point at a unix socket

    def __str__(self) -> str:
        if self.unix_socket:
            return self.unix_socket
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connect(self, timeout: float = 2.0) -> socket.socket:
        if self.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_socket)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock


# Protocol probes for external servers. A bare TCP connect is not proof: proxies
# and sandboxes (this one included) accept connections to any address and then
# answer with an HTTP error, so each probe requires a reply only the real server
# would give.


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe_postgres(sock: socket.socket) -> bool:
    # SSLRequest: the server answers one byte, 'S' or 'N' (or 'E' from very old servers).
    sock.sendall(struct.pack("!ii", 8, 80877103))
    return recv_exactly(sock, 1) in (b"S", b"N", b"E")


def probe_redis(sock: socket.socket) -> bool:
    # Any RESP reply counts: "+PONG", or "-NOAUTH ..." from a password-protected server.
    sock.sendall(b"PING\r\n")
    return recv_exactly(sock, 1) in (b"+", b"-")


def probe_kafka(sock: socket.socket) -> bool:
    # ApiVersions v0 (api key 18); every broker since 0.10 answers it, echoing our correlation id.
    client_id = b"stack.py"
    body = struct.pack("!hhih", 18, 0, 0x5EED, len(client_id)) + client_id
    sock.sendall(struct.pack("!i", len(body)) + body)
    header = recv_exactly(sock, 8)
    return len(header) == 8 and struct.unpack("!ii", header)[1] == 0x5EED


def endpoint_answers(
    endpoint: Endpoint, probe: Callable[[socket.socket], bool], tls: bool = False
) -> bool:
    try:
        with endpoint.connect() as raw:
            if tls:
                # rediss://: we only check that a TLS server is there, not who it is.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                with context.wrap_socket(raw, server_hostname=endpoint.host) as sock:
                    return probe(sock)
            return probe(raw)
    except (OSError, ValueError, struct.error):
        return False


def parse_hostports(text: str, default_port: int, var: str) -> list[Endpoint]:
    """Parse `host[:port][,host[:port]...]`, IPv6 literals in brackets."""
    endpoints: list[Endpoint] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", item)
        if not match:
            raise StackError(f"{var}: cannot parse host {item!r}")
        host = match.group(1) or match.group(3) or "localhost"
        port_text = match.group(2) or match.group(4)
        port = int(port_text) if port_text else default_port
        if not 0 < port < 65536:
            raise StackError(f"{var}: port {port} out of range")
        endpoints.append(Endpoint(unquote(host), port))
    if not endpoints:
        raise StackError(f"{var}: no host given")
    return endpoints


@dataclass(frozen=True)
class ParsedUrl:
    endpoints: list[Endpoint]
    masked: str


def parse_url(url: str, schemes: tuple[str, ...], default_port: int, var: str) -> ParsedUrl:
    """Parse a postgresql:// or redis:// URL without urllib's single-host limitation."""
    match = re.fullmatch(
        r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?", url.strip()
    )
    if not match or match.group(1).lower() not in schemes:
        raise StackError(
            f"{var} must be a {' or '.join(s + '://' for s in schemes)} URL (got {mask_url(url)!r})"
        )
    scheme, netloc, path, query = (
        match.group(1),
        match.group(2),
        match.group(3),
        match.group(4) or "",
    )
    userinfo, _, hostlist = netloc.rpartition("@")
    masked_userinfo = userinfo
    if ":" in userinfo:
        masked_userinfo = userinfo.split(":", 1)[0] + ":****"
    masked = (
        f"{scheme}://{masked_userinfo + '@' if userinfo else ''}{hostlist}{path}{mask_query(query)}"
    )

    params = parse_qs(query.lstrip("?"))
    socket_dir = (params.get("host") or [""])[0]
    if not hostlist and socket_dir.startswith("/"):
        # libpq form: postgresql:///db?host=/var/run/postgresql[&port=5433]
        port = int((params.get("port") or [default_port])[0])
        return ParsedUrl([Endpoint("localhost", port, f"{socket_dir}/.s.PGSQL.{port}")], masked)
    return ParsedUrl(parse_hostports(hostlist or "localhost", default_port, var), masked)


def mask_query(query: str) -> str:
    return re.sub(r"(?i)(password=)[^&]*", r"\1****", query)


def mask_url(url: str) -> str:
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:****@", url)
    return mask_query(masked)
