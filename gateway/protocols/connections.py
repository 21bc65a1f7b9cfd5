"""The WebSocket connections this node upgraded itself: one keepalive ticker for all of
them (not a timer per connection), and the short tasks that connect and disconnect them
(GatewayNode.connect/disconnect), owned here and awaited or cancelled on shutdown. No
task lives as long as a connection does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from core.service import stop_tasks
from gateway.client import Client
from gateway.codes import Close
from gateway.node import GatewayNode, Refused
from gateway.protocols.websocket import WebSocketProtocol

log = logging.getLogger(__name__)

# The ticker visits one slice of the connections at a time, so each ping interval is
# spread over SLICES short bursts instead of one write per connection all at once (which
# would stall delivery on a node with tens of thousands of connections).
SLICES = 10
# After the bounded wait of shutdown, what is cut gets this long to disconnect.
DISCONNECT_GRACE = 1.0


class WebSocketConnections:
    def __init__(self, node: GatewayNode, ping_seconds: float) -> None:
        self._node = node
        self._step = ping_seconds / SLICES
        self._slices: list[set[WebSocketProtocol]] = [set() for _ in range(SLICES)]
        self._next_slice = 0
        self._tick = 0
        self._connecting: set[WebSocketProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self.closing = False  # shutting down: nothing new is admitted

    def __len__(self) -> int:
        return sum(len(s) for s in self._slices)

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._step, self._keepalive)

    # -- lifecycle of one connection ---------------------------------------------------

    def opened(self, ws: WebSocketProtocol, client: Client, token: str, since: int | None) -> None:
        """An admitted connection, just upgraded: kept alive from now on, and connected
        to the node by a task owned here."""
        self._slices[self._next_slice].add(ws)
        self._next_slice = (self._next_slice + 1) % SLICES
        self._connecting.add(ws)
        self._spawn(self._connect(ws, client, token, since))

    def refused(self, ws: WebSocketProtocol, code: Close, reason: str) -> None:
        """Upgraded but not admitted: browsers cannot read the status of a failed
        upgrade, but they can read a close code."""
        ws.begin_close(code, reason)
        self._spawn(ws.close(code, reason))

    def lost(self, ws: WebSocketProtocol) -> None:
        """The connection's socket is gone (called by the protocol)."""
        for connections in self._slices:
            connections.discard(ws)
        if ws.client is not None and ws not in self._connecting:
            self._spawn(self._node.disconnect(ws.client))
        self._check_idle()

    async def _connect(
        self, ws: WebSocketProtocol, client: Client, token: str, since: int | None
    ) -> None:
        try:
            await self._node.connect(client, token, since)
        except Refused as refused:
            client.close(refused.code, refused.message)  # closed (bounded) by disconnect()
        finally:
            self._connecting.discard(ws)
            if ws.lost:  # went away while connecting: lost() left the disconnect to us
                await self._node.disconnect(client)

    # -- keepalive ---------------------------------------------------------------------

    def _keepalive(self) -> None:
        try:
            for ws in list(self._slices[self._tick % SLICES]):
                ws.keepalive()
            self._tick += 1
        finally:
            # Re-armed whatever happened, so one bad connection cannot stop keepalive.
            if not self.closing:
                self._timer = asyncio.get_running_loop().call_later(self._step, self._keepalive)

    # -- tasks -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("websocket connect/disconnect failed: %r", exc, exc_info=exc)
        self._check_idle()

    def _check_idle(self) -> None:
        if self.closing and not self._tasks and not any(self._slices):
            self._idle.set()

    # -- shutdown ----------------------------------------------------------------------

    async def shutdown(self, wait: float) -> None:
        """After the node told its clients to go (GatewayNode.shutdown): tell those still
        connecting too, wait (bounded) until every connection has ended and every task
        has finished, then cut what is left and cancel what still runs."""
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
        open_now = [ws for connections in self._slices for ws in connections]
        for ws in open_now:
            if ws.client is not None:
                ws.client.close(Close.SHUTTING_DOWN, "server restarting; reconnect with since")
        self._check_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait)
        left = [ws for connections in self._slices for ws in connections]
        for ws in left:
            ws.abort()
        if left:
            log.warning("%d websocket connections cut at shutdown", len(left))
            await asyncio.sleep(0)  # their connection_lost runs: disconnects start
            await asyncio.sleep(0)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=DISCONNECT_GRACE)
        await stop_tasks(list(self._tasks))
