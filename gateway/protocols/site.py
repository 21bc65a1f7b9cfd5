"""The gateway's listening site: aiohttp's TCPSite, except that every accepted connection
starts with our front protocol (front.py) instead of aiohttp's RequestHandler; with
GATEWAY_NATIVE_WEBSOCKET=false, aiohttp's RequestHandler after all (every WebSocket is then
gateway.endpoints.websocket's). Used by `python -m gateway` and by the tests, so both serve
through the same code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from core.aiohttp_internals import ProtocolSite
from core.service import BACKLOG, SETTINGS
from gateway.endpoints import NODE, WEBSOCKETS
from gateway.protocols.entry import Front


class FrontSite(ProtocolSite):
    __slots__ = ()

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port, backlog=backlog)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        if not self.app[SETTINGS].gateway_native_websocket:
            return server
        return Front(self.app[NODE], self.app[WEBSOCKETS], server)


def front_site(runner: web.AppRunner, host: str, port: int, reuse_port: bool) -> web.BaseSite:
    """core.service's site factory for the gateway."""
    return FrontSite(runner, host, port, reuse_port=reuse_port)
