"""Request parsing: bodies, query parameters, path ids and opaque cursors.

Everything the client sends passes through here and comes out typed or as an ApiError
naming the field. Bodies are validated by their models (server/contract), whose bounds
the OpenAPI document shows; query parameters are parsed by hand with the bounds of
their models (server/contract/queries.py), because the feed is the hot path. Nothing
downstream re-checks types.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from server.contract.fields import HANDLE_CHARS, HANDLE_MAX
from server.contract.fields import MAX_ID as MAX_ID
from server.contract.fields import parse_id as _id_of
from server.contract.parse import validate, validate_field
from server.contract.posts import NewPost
from server.contract.queries import CURSOR_MAX, PAGE_LIMIT
from server.http.errors import CLIENT_GONE, ApiError, bad_request, invalid

M = TypeVar("M", bound=BaseModel)

HANDLE = re.compile(f"^{HANDLE_CHARS}{{1,{HANDLE_MAX}}}$")
# A request body must have arrived this long after its handler asked for it.
BODY_SECONDS = 10.0


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. 413 over the size limit, 400 not JSON (or not decodable),
    422 not an object."""
    try:
        async with asyncio.timeout(BODY_SECONDS):
            raw = await request.read()  # raises 413 past client_max_size
    except TimeoutError:  # a body trickling in holds a connection and a task: not forever
        message = f"request body not received within {BODY_SECONDS:g} s"
        raise _closing(request, 408, "body_timeout", message) from None
    except web.RequestPayloadError:  # a Content-Encoding the bytes do not follow, bad chunking
        # The parser stops at such a body: marked ended, or aiohttp's drain after the
        # answer would meet the same error and log it as an unhandled exception.
        request.content.feed_eof()
        raise _closing(request, 400, "invalid_json", "request body could not be decoded") from None
    except ConnectionResetError:  # the client left mid-body: nobody reads the answer
        raise ApiError(CLIENT_GONE, "client_gone", "the client closed the connection") from None
    if not raw:
        raise bad_request("invalid_json", "request body must be a JSON object")
    try:
        # orjson, not pydantic's parser: the same bytes are refused as before (a lone
        # surrogate is 400 invalid_json) and read alike (a huge integer is a float).
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("invalid_json", "request body is not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise invalid("body", "request body must be a JSON object", "invalid_body")
    return body


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body validated as `model`: 4xx as read_json, or 422 naming the field at fault."""
    return validate(model, await read_json(request))


def _closing(request: web.Request, status: int, code: str, message: str) -> ApiError:
    """An answer after which the connection closes: the rest of its body cannot be read,
    or is not waited for (aiohttp still drains it for a few seconds after the answer)."""
    request.protocol.close()
    return ApiError(status, code, message, headers={"Connection": "close"})


def parse_id(value: Any, field: str) -> int:
    """Ids travel as decimal strings (64-bit ints do not survive JavaScript)."""
    try:
        return _id_of(value)
    except ValueError as exc:  # pydantic's error, raised outside a model here
        raise invalid(field, str(exc).replace("{field}", field)) from None


def path_id(request: web.Request, name: str = "id") -> int:
    try:
        return _id_of(request.match_info[name])
    except ValueError:
        raise ApiError(404, "not_found", f"no such {name}") from None


def limit(
    request: web.Request, default: int = PAGE_LIMIT.default, maximum: int = PAGE_LIMIT.maximum
) -> int:
    return limit_value(request.query.get("limit"), default, maximum)


def limit_value(
    raw: str | None, default: int = PAGE_LIMIT.default, maximum: int = PAGE_LIMIT.maximum
) -> int:
    """The limit query parameter's value (None or empty: absent); raises ApiError (422)."""
    if raw is None or raw == "":
        return default
    # Length first: int() of a huge digit string raises (that would be a 500, not a 422).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or not 1 <= int(raw) <= maximum:
        raise invalid("limit", f"limit must be an integer from 1 to {maximum}")
    return int(raw)


# Cursors are opaque to clients: base64url of "v1:<kind>:<values>", so we can change what
# is inside without breaking them, and a cursor of one list is refused by another.
def encode_cursor(kind: str, *values: int) -> str:
    text = f"v1:{kind}:" + ":".join(str(v) for v in values)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _parse_cursor(raw: str, kind: str, arity: int) -> tuple[int, ...] | None:
    if len(raw) > CURSOR_MAX:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        version, found_kind, *values = text.split(":")
        numbers = tuple(int(v) for v in values)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if version != "v1" or found_kind != kind or len(numbers) != arity:
        return None
    if any(not 0 <= n <= MAX_ID for n in numbers):
        return None
    return numbers


def decode_cursor(request: web.Request, kind: str, arity: int = 1) -> tuple[int, ...] | None:
    return cursor_value(request.query.get("cursor"), kind, arity)


def cursor_value(raw: str | None, kind: str, arity: int = 1) -> tuple[int, ...] | None:
    """The cursor query parameter's values (None: first page); raises ApiError (422)."""
    if not raw:
        return None
    numbers = _parse_cursor(raw, kind, arity)
    if numbers is None:
        raise invalid("cursor", "cursor is not valid for this list", "invalid_cursor")
    return numbers


def idempotency_key(request: web.Request, from_body: str | None) -> str | None:
    """The body's key (checked with its model), else the `Idempotency-Key` header's, held
    to the same rule."""
    if from_body is not None:
        return from_body
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return None
    key: str = validate_field(NewPost, "idempotency_key", header)
    return key
