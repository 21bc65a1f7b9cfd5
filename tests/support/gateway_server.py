"""The gateway app served the way `python -m gateway` serves it (core.service's runner and
the gateway's front site: WebSocket upgrades leave aiohttp), on a free port, behind
aiohttp's TestClient interface (`gw.app`, `gw.ws_connect`, `gw.get`, `gw.port`)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from core.service import SETTINGS, app_runner
from core.settings import Settings
from gateway.app import create_app
from gateway.endpoints import WEBSOCKETS
from gateway.protocols.connections import WebSocketConnections
from gateway.protocols.site import FrontSite


class GatewayServer(TestServer):
    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        runner = app_runner(self.app, self.app[SETTINGS].shutdown_timeout)
        self.runner = runner
        await runner.setup()
        site = FrontSite(runner, self.host, 0)
        await site.start()
        self.port = site.port
        self.scheme = "http"
        # BaseTestServer._root is aiohttp's, not public (core/aiohttp_internals.INTERNALS).
        self._root = URL(f"http://{self.host}:{self.port}")


def websockets_of(app: web.Application) -> WebSocketConnections:
    """The connections the front upgraded itself (not those aiohttp's handler took)."""
    return app[WEBSOCKETS]


def serve_gateway(settings: Settings) -> GatewayServer:
    """For `aiohttp_client(serve_gateway(settings))`."""
    return GatewayServer(create_app(settings))
