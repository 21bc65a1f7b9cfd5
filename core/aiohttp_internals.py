"""Every use of aiohttp beyond its public API (names exported by `aiohttp` or
`aiohttp.web`), in one module: each entry says what we use, why, and where it lives
upstream. aiohttp is pinned to one minor version (pyproject.toml) and
tests/core/test_aiohttp_internals.py fails when any of these goes away or changes the way we
rely on, so an upgrade of aiohttp starts here. Nothing else imports aiohttp's
non-public modules or touches its underscore names (the test checks that too)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import (
    BadHttpMethod,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from yarl import URL

# The version the entries below were checked against; links point at its tag.
UPSTREAM = "https://github.com/aio-libs/aiohttp/blob/v3.14.5/aiohttp/"

__all__ = [
    "INTERNALS",
    "SERVER_SOFTWARE",
    "BadHttpMethod",
    "HttpProcessingError",
    "InvalidURLError",
    "LineTooLong",
    "PayloadEncodingError",
    "ProtocolSite",
    "ServerHookRunner",
    "request_handler",
]


@dataclass(frozen=True, slots=True)
class Internal:
    name: str  # as aiohttp spells it
    used_by: str
    why: str
    upstream: str


INTERNALS = (
    Internal(
        "aiohttp.http_exceptions.{HttpProcessingError, BadHttpMethod, InvalidURLError, "
        "LineTooLong, PayloadEncodingError}",
        "core/http_errors.py, core/logs.py",
        "what aiohttp's parser raises for a request it cannot read, answered before any "
        "middleware: our 400 names the fault by its class (without quoting the request, "
        "which may hold a token) and the log gets one line instead of a traceback. No "
        "public hook exists for these errors.",
        UPSTREAM + "http_exceptions.py; https://github.com/aio-libs/aiohttp/issues/3287",
    ),
    Internal(
        "aiohttp.http.SERVER_SOFTWARE",
        "server/http/fast_feed.py",
        "the Server header aiohttp sends: the feed fast path answers with the same bytes "
        "aiohttp would (tests/server/test_front.py compares the headers).",
        UPSTREAM + "http_writer.py (re-exported by http.py)",
    ),
    Internal(
        "web.RequestHandler.handle_error(request, status=500, exc=None, message=None)",
        "core/http_errors.py (ShapedErrorsHandler)",
        "where aiohttp answers what it could not parse or what failed before a response; "
        "overridden to keep its logging and connection handling but answer in the API's "
        "one JSON error shape instead of text/plain. The class is exported, this method "
        "is not documented.",
        UPSTREAM + "web_protocol.py; https://github.com/aio-libs/aiohttp/issues/9882",
    ),
    Internal(
        "web.Server._loop, web.Server._kwargs",
        "request_handler() below (core/http_errors.py)",
        "what web.Server.__call__ builds each connection's RequestHandler with; our "
        "server builds a RequestHandler subclass with exactly the same.",
        UPSTREAM + "web_server.py",
    ),
    Internal(
        "web.BaseRunner._make_server()",
        "ServerHookRunner below (core/http_errors.py, server/http/fast_feed.py)",
        "the one place a runner builds its web.Server, after the app has started (so the "
        "app's state exists): the API server puts its feed fast path in front of it, "
        "every service its error shape on it.",
        UPSTREAM + "web_runner.py",
    ),
    Internal(
        "web.BaseRunner.cleanup() calling server.pre_shutdown() and server.shutdown(timeout)",
        "server/http/fast_feed.py (FeedFront)",
        "FeedFront stands in for the runner's web.Server: the runner's shutdown reaches "
        "it through these two calls only, so it must offer both with web.Server's "
        "signatures.",
        UPSTREAM + "web_runner.py",
    ),
    Internal(
        "web.BaseSite._runner, ._server, ._backlog",
        "ProtocolSite below (gateway/protocols/site.py)",
        "a site whose connections start with our own protocol (the gateway's front) "
        "instead of the runner's web.Server: BaseSite.stop() closes what start() put in "
        "_server, and the runner registers the site through BaseSite.__init__.",
        UPSTREAM + "web_runner.py",
    ),
    # Tests only (tests/support/): not shipped, listed so an upgrade finds them here too.
    Internal(
        "test_utils.TestServer._make_runner(**kwargs), BaseTestServer._root",
        "tests/support/api_server.py, tests/support/gateway_server.py",
        "the test servers run the same runner (and site) as `python -m server`/`gateway`.",
        UPSTREAM + "test_utils.py",
    ),
)


def request_handler(
    server: web.Server, handler_class: type[web.RequestHandler]
) -> web.RequestHandler:
    """A connection's protocol of `handler_class`, made as web.Server makes its own."""
    return handler_class(server, loop=server._loop, **server._kwargs)


class ServerHookRunner(web.AppRunner):
    """An AppRunner whose web.Server passes through wrap_server() once the app has
    started: the one override of the runner's private _make_server."""

    async def _make_server(self) -> web.Server:
        return self.wrap_server(await super()._make_server())

    def wrap_server(self, server: web.Server) -> web.Server:
        return server


class ProtocolSite(web.BaseSite):
    """A TCP site like web.TCPSite, except that protocol_factory() chooses what each
    accepted connection starts with (default: the runner's web.Server, as TCPSite)."""

    __slots__ = ("_bound_port", "_host", "_port", "_reuse_port", "app")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self.app = runner.app
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._bound_port: int | None = None

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self.port))

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return self._bound_port if self._bound_port is not None else self._port

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        return server

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner is set up before a site is made
        self._server = await asyncio.get_running_loop().create_server(
            self.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
