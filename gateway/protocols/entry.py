"""The first protocol of every connection the gateway accepts. It reads the first request
head: a WebSocket upgrade of GET /v1/stream is answered here (handshake, origin,
admission) and the socket switches to WebSocketProtocol, leaving nothing of aiohttp
behind; any other request (SSE, ops routes, preflight...) is handed, with the bytes
already read, to aiohttp's own RequestHandler, which then owns the connection for good.
It never reads more than one head and never waits longer than HEAD_TIMEOUT for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from core.service import hand_over
from gateway.codes import Close
from gateway.node import Admission, GatewayNode, Refused
from gateway.params import parse_since
from gateway.protocols.connections import WebSocketConnections
from gateway.protocols.handshake import (
    MAX_HEAD,
    HandshakeError,
    Request,
    Upgrade,
    check_upgrade,
    error_response,
    is_stream_request_line,
    parse_head,
    switching_protocols,
)
from gateway.protocols.websocket import WebSocketProtocol

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0  # seconds from accept to a complete request head
STREAM_REQUEST = b"GET /v1/stream"  # how the only request upgraded here begins


class Front:
    """What the first request of every connection needs; one per listening site."""

    def __init__(
        self,
        node: GatewayNode,
        connections: WebSocketConnections,
        http: Callable[[], asyncio.Protocol],
    ) -> None:
        self.node = node
        self.connections = connections
        self.http = http  # aiohttp's protocol factory (the runner's web.Server)

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)


class FrontProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_front", "_stream", "_timer", "_transport")

    def __init__(self, front: Front) -> None:
        self._front = front
        self._buf = bytearray()
        self._stream: bool | None = None  # the request line is GET /v1/stream (None: unread)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_TIMEOUT, self._transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()

    def eof_received(self) -> bool:
        return False  # hung up before finishing a request: close

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._stream is None:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                start = bytes(self._buf[: len(STREAM_REQUEST)])
                if len(self._buf) > MAX_HEAD or not STREAM_REQUEST.startswith(start):
                    self._hand_off()  # surely not ours: aiohttp answers it now
                return
            self._stream = is_stream_request_line(bytes(self._buf[:line_end]))
            if not self._stream:
                self._hand_off()
                return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HEAD:
            if len(self._buf) > MAX_HEAD:
                self._refuse(HandshakeError(431, "headers_too_large", "request head over 8 KiB"))
            return
        self._stop_timer()
        head, rest = bytes(self._buf[:end]), bytes(self._buf[end + 4 :])
        self._buf = bytearray()
        request: Request | None = None
        try:
            request = parse_head(head)
            if not request.wants_websocket:
                self._buf = bytearray(head + b"\r\n\r\n" + rest)
                self._hand_off()  # a plain GET /v1/stream: aiohttp's handler answers it
                return
            upgrade = check_upgrade(request, self._front.node.settings.gateway_allowed_origins)
        except HandshakeError as error:
            self._refuse(error, request.headers.get("origin") if request is not None else None)
            return
        self._upgrade(upgrade, rest)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_off(self) -> None:
        """aiohttp takes the connection over as if it had accepted it, bytes included."""
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        data, self._buf = bytes(self._buf), bytearray()
        hand_over(transport, self._front.http(), data)

    def _refuse(self, error: HandshakeError, origin: str | None = None) -> None:
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        log.debug("websocket handshake refused: %d %s", error.status, error.message)
        transport.write(error_response(error, origin))
        transport.close()

    def _upgrade(self, upgrade: Upgrade, rest: bytes) -> None:
        transport = self._transport
        assert transport is not None
        node, connections = self._front.node, self._front.connections
        ws = WebSocketProtocol(connections)
        transport.set_protocol(ws)
        ws.connection_made(transport)
        transport.write(switching_protocols(upgrade.key))
        try:
            admission, since = self._admit(upgrade)
        except Refused as refused:
            # Browsers cannot read an HTTP status from a failed upgrade; a close code they can.
            connections.refused(ws, refused.code, refused.message)
        else:
            ws.client = node.new_client(admission.user_id, ws)
            connections.opened(ws, ws.client, admission.token, since)
        if rest:
            ws.data_received(rest)

    def _admit(self, upgrade: Upgrade) -> tuple[Admission, int | None]:
        """The same admission as the aiohttp handler's; raises Refused."""
        if self._front.connections.closing:
            raise Refused(Close.SHUTTING_DOWN, 503, "unavailable", "server restarting")
        assert self._transport is not None
        peer = self._transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "?"
        admission = self._front.node.admit(address, upgrade.token)
        return admission, parse_since(upgrade.since)
