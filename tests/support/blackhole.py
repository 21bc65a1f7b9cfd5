"""A TCP proxy in front of a test's own server (a private Redis) that can misbehave as a
network does:

- `silent = True`: black-holed. Every connection stays open, new connections are still
  accepted (and connected upstream), and the bytes are dropped both ways instead of
  forwarded: clients wait for their timeouts instead of being refused. `silent = False`
  forwards again (what was dropped stays lost).
- `forget()`: the server went away without its clients hearing of it (a host or
  container restarted, its connections unknown to it now). The connections open at that
  moment stay open towards the clients but are cut upstream, and the next bytes a client
  sends on one are answered by closing it; new connections work as before.

    async with BlackHole("127.0.0.1", private.port) as hole:
        client = build_redis(dataclasses.replace(settings, redis_url=hole.url))
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType

CHUNK = 64 * 1024


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    forgotten: bool = False


class BlackHole:
    def __init__(self, upstream_host: str, upstream_port: int, db: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._db = db
        self.silent = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pairs: set[_Pair] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self._db}"

    def forget(self) -> None:
        """Cuts every open connection upstream without telling its client; the client's
        next bytes on it close it."""
        for pair in self._pairs:
            pair.forgotten = True
            pair.upstream.close()

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Closing both ends lets each relay finish by itself (asyncio logs an error for a
        # connection handler that was cancelled).
        for pair in self._pairs:
            pair.client.close()
            pair.upstream.close()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._tasks.add(handler)  # the server's task for this connection: awaited on exit
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(handler)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        to_upstream = asyncio.create_task(self._pump(reader, up_writer, pair, from_client=True))
        to_client = asyncio.create_task(self._pump(up_reader, writer, pair, from_client=False))
        try:
            pending = {to_upstream, to_client}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # One side closed: both close, but for a forgotten connection's upstream
                # side, which its client must not hear of until it sends something.
                if to_upstream in done or not pair.forgotten:
                    break
        finally:
            for task in (to_upstream, to_client):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            up_writer.close()
            self._pairs.discard(pair)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: _Pair,
        from_client: bool,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                if pair.forgotten:
                    if from_client:
                        return  # the relay closes the connection
                    continue
                if not self.silent:
                    writer.write(data)
                    await writer.drain()
