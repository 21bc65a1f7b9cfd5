"""The HTTPS side of a stand-in that aiohttp can serve (FCM, Web Push; the APNs one needs
HTTP/2 and has its own): bound on start so that port 0 becomes a known port, served with
the local CA's certificate, and usable as `async with`."""

from __future__ import annotations

import socket
from typing import Self

from aiohttp import web

from standins.tls import LocalCA

MAX_BODY = 64 * 1024


class HttpsSite:
    def __init__(self, tls: LocalCA, host: str, port: int) -> None:
        self.tls, self.host, self._port = tls, host, port
        self._runner: web.AppRunner | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The origin, https://host:port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        self.add_routes(app.router)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=self.tls.server_context())
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
