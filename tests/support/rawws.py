"""A WebSocket client on a raw socket, for what real clients never send: broken
handshakes, unmasked or malformed frames, fragments, silence. It speaks RFC 6455 by hand
so a test controls every byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from dataclasses import dataclass

import orjson

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65_536:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(path: str, *headers: str, key: str | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


async def http_exchange(port: int, request: bytes, timeout: float = 10.0) -> HttpAnswer:
    """Sends raw bytes, reads one HTTP answer (a 101 leaves the socket open: use
    RawWebSocket for those)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            answer = await read_head(reader)
            length = int(answer.headers.get("content-length", "0"))
            answer.body = await reader.readexactly(length)
        return answer
    finally:
        writer.close()


async def read_head(reader: asyncio.StreamReader) -> HttpAnswer:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return HttpAnswer(status, headers, b"")


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, *headers: str, then: bytes = b"") -> RawWebSocket:
        """Upgrades (asserting the 101 and its accept key); `then` is sent in the same
        write as the request, as a client pipelining its first frames would."""
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request(path, *headers, key=key) + then)
        answer = await asyncio.wait_for(read_head(reader), 10)
        assert answer.status == 101, answer
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        assert answer.headers["sec-websocket-accept"] == accept
        assert answer.headers["upgrade"].lower() == "websocket"
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self, timeout: float = 10.0) -> tuple[bool, int, bytes]:
        """The next frame: (fin, opcode, payload). Server frames are never masked."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "a server frame was masked"
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(await self.reader.readexactly(2), "big")
            elif size == 127:
                size = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(size)
        return bool(first & 0x80), first & 0x0F, payload

    async def receive_json(self, timeout: float = 10.0) -> object:
        _, opcode, payload = await self.receive(timeout)
        assert opcode == TEXT, (opcode, payload)
        return orjson.loads(payload)

    async def close_code(self, timeout: float = 10.0) -> int:
        """Reads frames until the server's close frame; returns its code."""
        async with asyncio.timeout(timeout):
            while True:
                _, opcode, payload = await self.receive(timeout)
                if opcode == CLOSE:
                    return int.from_bytes(payload[:2], "big") if payload else 1005

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the TCP connection (EOF or reset); our end is
        closed too."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except ConnectionError:
            pass
        finally:
            self.writer.close()
        return True

    def close(self) -> None:
        self.writer.close()
