"""Transports: how bytes reach one client. A transport knows frames, never events.

Both write straight to the socket's transport with one write() for everything queued
(one system call per flush, not per message), and report how much the kernel has not
taken yet so the client can be judged slow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Protocol

from aiohttp import web

from gateway.codes import CLOSE_TIMEOUT
from gateway.outgoing import Outgoing


def cut_when_stuck(raw: asyncio.WriteTransport) -> None:
    """For a connection being closed: if its peer stopped reading, what is still queued
    would hold it (and its memory) for as long as the peer likes. Cut CLOSE_TIMEOUT later."""
    if raw.get_write_buffer_size():
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, raw.abort)


async def last_write(ending: Awaitable[object], raw: asyncio.Transport | None) -> None:
    """Awaits a closing connection's last write (a close frame, the final chunk) for
    CLOSE_TIMEOUT at most: a peer that stopped reading has the connection cut instead of
    holding it as long as aiohttp would wait. A peer already gone is no error (uvloop
    raises RuntimeError on a closed transport)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ending
    except TimeoutError:
        if raw is not None:
            raw.abort()
    except (ConnectionError, RuntimeError):
        pass


class Transport(Protocol):
    name: str

    def write(self, messages: Sequence[Outgoing]) -> None: ...

    def buffered(self) -> int: ...

    async def close(self, code: int, reason: str) -> None: ...


class WebSocketTransport:
    """aiohttp's WebSocket, for an upgrade on a keep-alive connection aiohttp already
    owns (or every upgrade, with GATEWAY_NATIVE_WEBSOCKET=false); otherwise fresh
    connections are upgraded by gateway.protocols (the same contract)."""

    name = "websocket"

    def __init__(self, ws: web.WebSocketResponse, raw: asyncio.Transport) -> None:
        self._ws = ws
        self._raw = raw

    def write(self, messages: Sequence[Outgoing]) -> None:
        # Frames are complete units, so these writes never split one of aiohttp's own
        # frames (pings, close): everything here runs on one thread, synchronously.
        if not self._raw.is_closing():
            with contextlib.suppress(RuntimeError):  # uvloop: closed under us
                self._raw.write(b"".join(m.ws for m in messages))

    def buffered(self) -> int:
        return self._raw.get_write_buffer_size()

    async def close(self, code: int, reason: str) -> None:
        await last_write(self._ws.close(code=code, message=reason.encode()), self._raw)


class SSETransport:
    name = "sse"

    def __init__(self, response: web.StreamResponse, raw: asyncio.Transport) -> None:
        self._response = response
        self._raw = raw
        self.closed = asyncio.Event()
        self.started = False  # headers sent: raw writes may follow

    def write(self, messages: Sequence[Outgoing]) -> None:
        body = b"".join(m.sse for m in messages)
        self.write_raw(body)

    def write_raw(self, body: bytes) -> None:
        # The response uses chunked transfer encoding; frame the chunk ourselves since we
        # bypass aiohttp's writer to coalesce.
        if body and self.started and not self._raw.is_closing():
            with contextlib.suppress(RuntimeError):  # uvloop: closed under us
                self._raw.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")

    def buffered(self) -> int:
        return self._raw.get_write_buffer_size()

    async def close(self, code: int, reason: str) -> None:
        self.write_raw(f'event: close\ndata: {{"code": {code}, "reason": "{reason}"}}\n\n'.encode())
        self.closed.set()
