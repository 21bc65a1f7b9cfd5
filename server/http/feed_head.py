"""Reads a request head the front protocol (server/http/fast_feed.py) may answer by itself: a
plain HTTP/1.1 GET /v1/feed with a bearer token and only the feed's own query
parameters, which any HTTP server would read the same way. Anything else, or anything
unusual (HTTP/1.0, a body, an upgrade, percent-encoding, a repeated parameter, a control
character), reads as None and aiohttp answers it: the two can never disagree about what
a request means. Validating the values is server.http.validation's job, not this module's."""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.http.middleware import FEED_ROUTE

# A whole head this size keeps every line under aiohttp's own limits (8190 bytes per
# line and per header), so nothing answered here is one aiohttp would have refused.
MAX_HEAD = 8 * 1024
FEED_PATH = FEED_ROUTE.encode()
FEED_PREFIX = b"GET " + FEED_PATH  # how every request line answered here begins

# RFC 9110's token characters: a header name with anything else (a space before the
# colon, an obs-fold continuation line) is not ours to interpret.
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NOT_OURS = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_QUERY_UNUSUAL = re.compile(rb"[%+#;]")


@dataclass(frozen=True, slots=True)
class FeedRequest:
    authorization: str  # the header's value, for server.auth.bearer_value to read
    limit: str | None  # the raw query values (None: absent)
    cursor: str | None
    keep_alive: bool


def maybe_feed(start: bytes) -> bool:
    """Whether a head that begins with these bytes may still be a feed request."""
    n = min(len(start), len(FEED_PREFIX))
    return start[:n] == FEED_PREFIX[:n]


def parse_head(head: bytes) -> FeedRequest | None:
    """The head without its final CRLFCRLF, or None when aiohttp should read it."""
    request_line, _, header_block = head.partition(b"\r\n")
    params = _request_line(request_line)
    if params is None:
        return None
    headers = _headers(header_block.split(b"\r\n") if header_block else [])
    if headers is None:
        return None
    return FeedRequest(headers[0], params[0], params[1], headers[1])


def _request_line(line: bytes) -> tuple[str | None, str | None] | None:
    """(limit, cursor) of a GET /v1/feed over HTTP/1.1, else None."""
    if _CONTROL.search(line):
        return None
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    path, _, query = parts[1].partition(b"?")
    return _params(query) if path == FEED_PATH else None


def _headers(lines: list[bytes]) -> tuple[str, bool] | None:
    """(Authorization, keep-alive), or None: no Authorization or two, no Host (aiohttp
    refuses HTTP/1.1 without one), two Content-Lengths (aiohttp refuses those, even when
    they agree), or a header that is not ours."""
    authorization: str | None = None
    keep_alive = True
    hosts = lengths = 0
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name) or _CONTROL.search(value):
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"authorization":
            if authorization is not None:
                return None
            authorization = value.decode("utf-8", "surrogateescape")  # as aiohttp decodes
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            options = {option.strip() for option in value.lower().split(b",")}
            if b"upgrade" in options:
                return None
            keep_alive = b"close" not in options
        elif name == b"content-length":
            lengths += 1
            if value != b"0" or lengths > 1:
                return None
        elif name in _NOT_OURS:
            return None
    return (authorization, keep_alive) if authorization is not None and hosts == 1 else None


def _params(query: bytes) -> tuple[str | None, str | None] | None:
    """(limit, cursor) as given, or None for anything else in the query."""
    limit: str | None = None
    cursor: str | None = None
    if not query:
        return limit, cursor
    if not query.isascii() or _QUERY_UNUSUAL.search(query):
        return None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"limit" and limit is None:
            limit = value.decode("ascii")
        elif name == b"cursor" and cursor is None:
            cursor = value.decode("ascii")
        else:
            return None
    return limit, cursor
