"""Request parsing: bodies, fields, query parameters and opaque cursors.

Everything the client sends passes through here and comes out typed or as an ApiError
naming the field. Nothing downstream re-checks types.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import unicodedata
from typing import Any

import orjson
from aiohttp import web

from server.errors import CLIENT_GONE, ApiError, bad_request, invalid

MAX_ID = 2**63 - 1
HANDLE = re.compile(r"^[A-Za-z0-9_]{1,15}$")
POST_MAX_CHARS = 280
DISPLAY_NAME_MAX = 50
# A request body must have arrived this long after its handler asked for it.
BODY_SECONDS = 10.0
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces


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
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("invalid_json", "request body is not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise invalid("body", "request body must be a JSON object", "invalid_body")
    return body


def _closing(request: web.Request, status: int, code: str, message: str) -> ApiError:
    """An answer after which the connection closes: the rest of its body cannot be read,
    or is not waited for (aiohttp still drains it for a few seconds after the answer)."""
    request.protocol.close()
    return ApiError(status, code, message, headers={"Connection": "close"})


def refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(unknown[0], f"unknown field {unknown[0]!r}", "unknown_field")


def string(
    body: dict[str, Any], name: str, *, required: bool = True, default: str | None = None
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, f"{name} is required", "missing_field")
        return default
    if not isinstance(value, str):
        raise invalid(name, f"{name} must be a string")
    return value


def has_bad_characters(text: str, allow_newlines: bool) -> bool:
    """NUL, control characters, surrogates and non-characters; newlines where allowed."""
    for char in text:
        if char == "\n" and allow_newlines:
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Cn"):
            return True
    return False


def clean_text(value: str, field: str, max_chars: int, *, allow_newlines: bool) -> str:
    """NFC-normalise, trim, check characters and length (in code points after NFC, so a
    letter with a combining accent counts once where a precomposed form exists)."""
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
    if has_bad_characters(text, allow_newlines):
        raise invalid(
            field, f"{field} contains control or invalid characters", "invalid_characters"
        )
    if len(text) > max_chars:
        raise invalid(field, f"{field} is longer than {max_chars} characters", "too_long")
    return text


# What renders as nothing: separators and format characters (zero-width space, joiners,
# the BOM, the soft hyphen, bidi marks). A post made only of these would show as blank.
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cf"})


def post_text(body: dict[str, Any]) -> str:
    raw = string(body, "text")
    assert raw is not None
    text = clean_text(raw, "text", POST_MAX_CHARS, allow_newlines=True)
    if all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text):
        raise invalid("text", "text must have a visible character", "empty_text")
    return text


def handle(body: dict[str, Any]) -> str:
    value = string(body, "handle")
    assert value is not None
    if not HANDLE.fullmatch(value):
        raise invalid(
            "handle", "handle must be 1-15 characters of A-Z, a-z, 0-9 and _", "invalid_handle"
        )
    return value


def password(body: dict[str, Any]) -> str:
    value = string(body, "password")
    assert value is not None
    if not 8 <= len(value) <= 128:
        raise invalid("password", "password must be 8-128 characters", "invalid_password")
    if "\x00" in value:
        raise invalid("password", "password contains invalid characters", "invalid_password")
    return value


def parse_id(value: Any, field: str) -> int:
    """Ids travel as decimal strings (64-bit ints do not survive JavaScript)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(field, f"{field} must be an id (a decimal string)")
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise invalid(field, f"{field} must be an id (a decimal string)")
    number = int(text)
    if not 0 < number <= MAX_ID:
        raise invalid(field, f"{field} is out of range")
    return number


def optional_id(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    return None if value is None else parse_id(value, field)


def id_list(body: dict[str, Any], field: str, max_items: int) -> list[int]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(field, f"{field} must be a list of ids")
    if len(value) > max_items:
        raise invalid(field, f"{field} has more than {max_items} items")
    return [parse_id(item, field) for item in value]


def path_id(request: web.Request, name: str = "id") -> int:
    try:
        return parse_id(request.match_info[name], name)
    except ApiError:
        raise ApiError(404, "not_found", f"no such {name}") from None


def limit(request: web.Request, default: int = 20, maximum: int = 100) -> int:
    return limit_value(request.query.get("limit"), default, maximum)


def limit_value(raw: str | None, default: int = 20, maximum: int = 100) -> int:
    """The limit query parameter's value (None: absent); raises ApiError (422)."""
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
    if len(raw) > 200:
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


def idempotency_key(request: web.Request, body: dict[str, Any]) -> str | None:
    value = body.get("idempotency_key")
    if value is None:
        value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not isinstance(value, str) or not IDEMPOTENCY_KEY.fullmatch(value):
        raise invalid("idempotency_key", "idempotency_key must be 1-128 printable ASCII characters")
    return value
