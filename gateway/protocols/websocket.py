"""One upgraded WebSocket connection, spoken directly on the asyncio transport: the
client's frames parsed as they arrive, the close handshake, and the gateway's Transport
contract (write/buffered/close) for its Client. Nothing of aiohttp stays behind: no
request, no reader, no task, no timer per connection (keepalive is one ticker per node,
in connections.py). It never knows what an event is; the node decides what to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from gateway.client import Client
from gateway.codes import CLOSE_TIMEOUT, Close
from gateway.outgoing import Outgoing
from gateway.protocols.frames import (
    CLOSE,
    CONTINUATION,
    MAX_CLIENT_MESSAGE,
    PING,
    PING_FRAME,
    PONG,
    TEXT,
    Frame,
    FrameError,
    close_frame,
    control_frame,
    parse_close,
    parse_frame,
)
from gateway.transport import cut_when_stuck

if TYPE_CHECKING:
    from gateway.protocols.connections import WebSocketConnections

log = logging.getLogger(__name__)

# Pongs are not queued behind more than this: a peer that sends pings but reads nothing
# must not grow our write buffer (events are bounded by the client's queue limits).
PONG_BUFFER_LIMIT = 256 * 1024

# States. OPEN: frames are read and acted on. CLOSING: our close frame is sent; frames are
# read only to find the peer's close. FAILED: the client broke the protocol; our close
# frame is sent and whatever else arrives is discarded until it hangs up. CLOSED: the
# close handshake is over (or the connection is gone).
OPEN, CLOSING, FAILED, CLOSED = range(4)


def _nothing_buffered() -> int:
    return 0


class WebSocketProtocol(asyncio.Protocol):
    name = "websocket"  # the Transport contract: stats count connections by this name

    __slots__ = (
        "_alive",
        "_buf",
        "_closed",
        "_message",
        "_message_opcode",
        "_owner",
        "_state",
        "_transport",
        "buffered",
        "client",
    )

    def __init__(self, owner: WebSocketConnections) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        # The Transport contract's buffered(): the socket transport's own method while
        # there is one. The client asks on every queued event, and a Python method in
        # between cost more than the answer.
        self.buffered: Callable[[], int] = _nothing_buffered
        self.client: Client | None = None  # None: refused, only the close is left to do
        self._buf = b""  # an incomplete frame (bounded: the frame limit plus its header)
        self._message: bytearray | None = None  # fragments of a message so far
        self._message_opcode = TEXT
        self._state = OPEN
        self._alive = True  # something arrived since the last keepalive ping
        self._closed: asyncio.Future[None] | None = None  # set once the connection ends

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        self.buffered = self._transport.get_write_buffer_size

    def data_received(self, data: bytes) -> None:
        self._alive = True
        if self._state >= FAILED:
            return
        buf = self._buf + data if self._buf else data
        pos = 0
        try:
            while self._state < FAILED:
                frame, pos = parse_frame(buf, pos)
                if frame is None:
                    break
                self._on_frame(frame)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self._buf = buf[pos:] if self._state < FAILED else b""

    def eof_received(self) -> bool:
        return False  # the peer hung up: close our side too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.buffered = _nothing_buffered
        self._state = CLOSED
        self._buf, self._message = b"", None
        self._ended()
        self._owner.lost(self)

    # -- the gateway's Transport contract ----------------------------------------------

    def write(self, messages: Sequence[Outgoing]) -> None:
        if self._state == OPEN:  # nothing may follow our close frame
            if len(messages) == 1:  # the usual case: no join to build
                self._send(messages[0].ws)
            else:
                self._send(b"".join([m.ws for m in messages]))

    async def close(self, code: int, reason: str) -> None:
        """Our close frame, then wait (bounded) for the peer's, then hang up."""
        self.begin_close(code, reason)
        if self._state == CLOSED or self._transport is None:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self._hang_up()
        except asyncio.CancelledError:
            self._hang_up()
            raise

    # -- for the node's connections ----------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._transport is None

    def begin_close(self, code: int, reason: str) -> None:
        """Sends our close frame now (once); the rest of the handshake is close()'s."""
        if self._state == OPEN:
            self._state = CLOSING
            self._send(close_frame(code, reason))

    def keepalive(self) -> None:
        """Called once per ping interval: drop a peer silent since the last ping, else
        ping it. A connection that is closing has its own bounded wait."""
        if self._state != OPEN or self._transport is None:
            return
        if not self._alive:
            log.debug("websocket peer silent for a ping interval: dropped")
            self._transport.abort()
            return
        self._alive = False
        self._send(PING_FRAME)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- frames from the client --------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode >= CLOSE:
            self._on_control(opcode, frame.payload)
        elif self._state != OPEN:
            return  # closing: only the peer's close frame matters now
        elif opcode == CONTINUATION:
            if self._message is None:
                raise FrameError(Close.PROTOCOL_ERROR, "continuation frame without a message")
            self._message += frame.payload
            if len(self._message) > MAX_CLIENT_MESSAGE:
                raise FrameError(Close.TOO_BIG, f"message over {MAX_CLIENT_MESSAGE} bytes")
            if frame.fin:
                payload, self._message = bytes(self._message), None
                self._on_message(self._message_opcode, payload)
        elif self._message is not None:
            raise FrameError(Close.PROTOCOL_ERROR, "new message inside a fragmented one")
        elif frame.fin:
            self._on_message(opcode, frame.payload)
        else:
            self._message, self._message_opcode = bytearray(frame.payload), opcode

    def _on_message(self, opcode: int, payload: bytes) -> None:
        client = self.client
        if client is None:
            return
        text = None
        if opcode == TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise FrameError(Close.INVALID_DATA, "text message is not UTF-8") from None
        client.received(text)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            if self._state == OPEN and self.buffered() < PONG_BUFFER_LIMIT:
                self._send(control_frame(PONG, payload))
        elif opcode == CLOSE:
            code = parse_close(payload)
            if self._state == OPEN:
                self._send(close_frame(code))  # echo the peer's code (RFC 6455 5.5.1)
            self._state = CLOSED
            # The server closes the TCP connection first (RFC 6455 7.1.1); what is still
            # buffered is flushed before, for CLOSE_TIMEOUT at most: a peer that sent its
            # close and stopped reading would keep the connection (and its count) forever.
            transport = self._transport
            if transport is not None:
                transport.close()
                cut_when_stuck(transport)
            self._ended()
        # PONG: data_received already marked the connection alive.

    def _fail(self, code: Close, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): our close frame with the code, then our
        side shut; what arrives is read and discarded until the peer hangs up (or for
        CLOSE_TIMEOUT): closing at once could reset it before the peer reads the code."""
        log.debug("websocket client failed the connection: %d %s", code, reason)
        self.begin_close(code, reason)
        self._state = FAILED
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # The peer's close frame can no longer be told from garbage: the FIN tells it
            # we are done, and it hangs up without waiting for our echo.
            with contextlib.suppress(RuntimeError, OSError):
                transport.write_eof()
        self._buf, self._message = b"", None
        if self.client is not None:
            self.client.close(code, reason)  # the node's close task waits for the end

    # -- the socket --------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # A plain try, not contextlib.suppress: this runs once per socket write.
            try:  # noqa: SIM105
                transport.write(data)
            except RuntimeError:  # uvloop: closed under us
                pass

    def _ended(self) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _hang_up(self) -> None:
        """After a close we started: close gracefully once everything was written, else
        (a peer that stopped reading) cut the connection, so nothing waits on it."""
        transport = self._transport
        if transport is None:
            return
        self._state = CLOSED
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
