"""Live-stream clients for tests: aiohttp's WebSocket client and a small EventSource
(SSE) reader that parses the wire format the way a browser does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class SSEEvent:
    data: str
    id: str | None = None
    event: str | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class SSEClient:
    response: aiohttp.ClientResponse
    _buffer: bytes = b""
    comments: int = 0
    retry: int | None = None
    _pending: list[SSEEvent] = field(default_factory=list)

    async def next(self, timeout: float = 10.0) -> SSEEvent:
        async with asyncio.timeout(timeout):
            while not self._pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise ConnectionError("stream ended")
                self._buffer += chunk
                while b"\n\n" in self._buffer:
                    block, self._buffer = self._buffer.split(b"\n\n", 1)
                    self._parse(block.decode())
        return self._pending.pop(0)

    def _parse(self, block: str) -> None:
        event = SSEEvent(data="")
        lines = []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                lines.append(value)
            elif name == "id":
                event.id = value
            elif name == "event":
                event.event = value
            elif name == "retry":
                self.retry = int(value)
        if lines:
            event.data = "\n".join(lines)
            self._pending.append(event)


async def ws_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> Any:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return orjson.loads(message.data)
