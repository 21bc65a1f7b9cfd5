"""The one JSON error shape of the API (server/http/middleware.py makes every failure use it).

Every failure leaves as {"error": {"code", "message", "field"?}}: our own ApiErrors,
aiohttp's HTTP exceptions (404, 405, 413), and, as a last resort, unexpected exceptions
(500, logged with a traceback, never with internals in the body).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import asyncpg
from aiohttp import web

from core.http_errors import error_body

log = logging.getLogger(__name__)

# Foreign keys from rows a request writes for the signed-in user to that user.
ACTING_USER_KEYS = frozenset(
    {
        "posts_author_id_fkey",
        "likes_user_id_fkey",
        "follows_follower_id_fkey",
        "devices_user_id_fkey",
        "idempotency_keys_user_id_fkey",
    }
)
CLIENT_GONE = 499  # the status recorded for a request whose client left (nginx's)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def invalid(field: str, message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(422, code, message, field=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"{what.replace('_', ' ')} not found")


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class Failure(NamedTuple):
    """An error response's parts, for whoever writes it (aiohttp or server/http/fast_feed.py)."""

    status: int
    body: bytes
    headers: dict[str, str] | None


def failure(exc: Exception, method: str, path: str) -> Failure:
    """What a handler's exception answers. HTTP exceptions below 400 (redirects) are not
    errors: callers re-raise those. Anything unexpected is a 500, logged with its
    traceback, never with internals in the body."""
    if isinstance(exc, ApiError):
        return Failure(exc.status, error_body(exc.code, exc.message, exc.field), exc.headers)
    if isinstance(exc, web.HTTPException):
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 413 else "request body is too large"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return Failure(exc.status, error_body(code, message), headers)
    if (
        isinstance(exc, asyncpg.ForeignKeyViolationError)
        and exc.constraint_name in ACTING_USER_KEYS
    ):  # a well-signed token whose user is not in this database (reset, or another one)
        return Failure(401, error_body("invalid_token", "the token's user does not exist"), None)
    log.error("unhandled error in %s %s", method, path, exc_info=exc)
    return Failure(500, error_body("internal_error", "internal server error"), None)


def response_for(request: web.Request, exc: Exception) -> web.Response:
    """The error response for what a handler raised (server/http/middleware.py)."""
    status, body, headers = failure(exc, request.method, request.path)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)
