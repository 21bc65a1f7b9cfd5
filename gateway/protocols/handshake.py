"""The HTTP side of a WebSocket upgrade (RFC 6455 section 4, RFC 9112): a strict parse of
the request head, the checks of the handshake, and the bytes of our answers (101, or an
HTTP error in the API's JSON shape). Pure functions on bytes, no socket."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from core.http_errors import error_body
from gateway.params import bearer_token, cors_headers, origin_allowed

STREAM_PATH = b"/v1/stream"
MAX_HEAD = 8 * 1024  # bytes of request line and headers
MAX_HEADERS = 64
MAX_QUERY_FIELDS = 32
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Fields a request may carry once: a second value is ambiguous, so it is refused.
SINGLE = frozenset(
    {
        "host",
        "authorization",
        "origin",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
    }
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible characters, space, tab and obs-text; no other control character.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


class HandshakeError(Exception):
    """A broken handshake, answered as an HTTP error (the connection is not upgraded)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def bad(message: str) -> HandshakeError:
    return HandshakeError(400, "bad_request", message)


@dataclass(frozen=True, slots=True)
class Request:
    target: bytes
    headers: dict[str, str]  # lower-case names

    def tokens(self, name: str) -> set[str]:
        """A comma-separated list field (Connection, Upgrade), lower-cased."""
        return {t.strip().lower() for t in self.headers.get(name, "").split(",")} - {""}

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.tokens("upgrade")


@dataclass(frozen=True, slots=True)
class Upgrade:
    key: str
    token: str | None
    since: str | None


def is_stream_request_line(line: bytes) -> bool:
    """`GET /v1/stream[?...] HTTP/1.1`: the only request this module upgrades; anything
    else (SSE, ops routes, other methods, HTTP/1.0) is aiohttp's."""
    parts = line.split(b" ")
    return (
        len(parts) == 3
        and parts[0] == b"GET"
        and parts[2] == b"HTTP/1.1"
        and parts[1].split(b"?", 1)[0] == STREAM_PATH
    )


def parse_head(head: bytes) -> Request:
    """The request line and header fields (without the final CRLFCRLF), strictly: no bare
    CR or LF, no folded lines, no space before a colon, no control characters."""
    lines = head.split(b"\r\n")
    target = lines[0].split(b" ")[1]
    if not _TARGET.fullmatch(target):
        raise bad("invalid request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise HandshakeError(431, "headers_too_large", "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise bad("malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise bad("control character in a header field")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        if key in headers:
            if key in SINGLE:
                raise bad(f"repeated header field: {key}")
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return Request(target, headers)


def check_upgrade(request: Request, allowed_origins: str) -> Upgrade:
    """The checks of RFC 6455 4.2.1 on a request that asks for a WebSocket, after the
    origin's (first, as the aiohttp handler does)."""
    headers = request.headers
    if not origin_allowed(headers.get("origin"), allowed_origins):
        raise HandshakeError(403, "origin_not_allowed", "this origin may not connect")
    if "content-length" in headers or "transfer-encoding" in headers:
        # A body would be read as WebSocket frames: refuse rather than guess.
        raise bad("an upgrade request has no body")
    if "host" not in headers:
        raise bad("missing Host")
    if "upgrade" not in request.tokens("connection"):
        raise bad("Connection must include Upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(
            426,
            "upgrade_required",
            "unsupported WebSocket version; this server speaks 13",
            {"Sec-WebSocket-Version": "13"},
        )
    key = headers.get("sec-websocket-key", "")
    try:
        valid_key = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise bad("missing or invalid Sec-WebSocket-Key")
    query = request.target.partition(b"?")[2].decode("ascii")
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise bad("too many query parameters") from None
    params: dict[str, str] = {}
    for name, value in fields:
        params.setdefault(name, value)  # the first value counts, as in aiohttp's query
    return Upgrade(
        key,
        bearer_token(headers.get("authorization"), params.get("access_token")),
        params.get("since"),
    )


def switching_protocols(key: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())  # noqa: S324
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def error_response(error: HandshakeError, origin: str | None) -> bytes:
    body = error_body(error.code, error.message)
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **cors_headers(origin),
        **error.headers,
    }
    head = f"HTTP/1.1 {error.status} {REASONS.get(error.status, 'Error')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode("latin-1") + body
