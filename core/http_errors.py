"""The one JSON error shape of DESIGN.md, `{"error": {"code", "message", "field"?}}`, and
the runner every service serves through so that aiohttp's own answers have it too.

aiohttp answers a request it cannot parse (a line over 8 190 bytes, an unknown method, a
body in an encoding it cannot decode) itself, before any application middleware sees
it, and did so in text/plain. Clients and proxies that read our `code` then had nothing
to read. `ShapedErrorsRunner` keeps aiohttp's logging and its decision to close the
connection, and only changes the body.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from core.aiohttp_internals import (
    BadHttpMethod,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
    ServerHookRunner,
    request_handler,
)

MALFORMED = "malformed_request"


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    error: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return orjson.dumps({"error": error})


def unparsed(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, in words that quote none of
    its bytes (aiohttp's own messages do, and a request line may hold a token)."""
    if isinstance(exc, LineTooLong):
        return "a request line or header line is too long"
    if isinstance(exc, BadHttpMethod):
        return "the request line's method is not a valid HTTP method"
    if isinstance(exc, InvalidURLError):
        return "the request target is not a valid URL"
    if isinstance(exc, PayloadEncodingError):
        return "the body cannot be decoded as its Content-Encoding or Transfer-Encoding says"
    return "the request is not valid HTTP/1.1"


def shaped(status: int, exc: BaseException | None) -> bytes:
    if isinstance(exc, HttpProcessingError) or status == 400:
        return error_body(MALFORMED, unparsed(exc))
    if status == 504:
        return error_body("timeout", "the request took too long to answer")
    return error_body("internal_error", "internal server error")


class ShapedErrorsHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, answering its own errors in our shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's logs the error (core/logs.MalformedRequests makes that one line) and
        # raises if an answer has begun already; only its text/plain body is replaced.
        super().handle_error(request, status, exc, message)
        response = web.Response(
            status=status, body=shaped(status, exc), content_type="application/json"
        )
        response.force_close()  # as aiohttp's: the parser's state is not to be trusted
        return response


class ShapedErrorsServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return request_handler(self, ShapedErrorsHandler)


class ShapedErrorsRunner(ServerHookRunner):
    """An AppRunner whose connections are ShapedErrorsHandlers. (aiohttp builds the
    web.Server inside Application, so its class is set on what it built.)"""

    def wrap_server(self, server: web.Server) -> web.Server:
        server = super().wrap_server(server)
        server.__class__ = ShapedErrorsServer
        return server
