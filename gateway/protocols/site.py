"""The gateway's listening site: aiohttp's TCPSite, except that every accepted connection
starts with our front protocol (front.py) instead of aiohttp's RequestHandler. Used by
`python -m gateway` and by the tests, so both serve through the same code."""

from __future__ import annotations

import asyncio

from aiohttp import web
from yarl import URL

from core.service import BACKLOG
from gateway.handlers import NODE, WEBSOCKETS
from gateway.protocols.front import Front


class FrontSite(web.BaseSite):
    __slots__ = ("_app", "_bound_port", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._app = runner.app
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._bound_port: int | None = None

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self.port))

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return self._bound_port if self._bound_port is not None else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner is set up before a site is made
        front = Front(self._app[NODE], self._app[WEBSOCKETS], server)
        self._server = await asyncio.get_running_loop().create_server(
            front, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def front_site(runner: web.AppRunner, host: str, port: int, reuse_port: bool) -> web.BaseSite:
    """core.service's site factory for the gateway."""
    return FrontSite(runner, host, port, reuse_port=reuse_port)
