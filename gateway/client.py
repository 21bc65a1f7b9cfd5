"""One connection's state: its bounded outbound queue, coalesced flushes, the replay
window in which live events are held back until what the client missed has been sent,
and the ids it has sent, so that it never sends a post or a notification twice.

Why the connection remembers: a resumed client is sent what it missed (read from the
feed, which may already hold a post that fan-out has not published yet), and live events
arrive whenever fan-out gets to them, before, during or long after that replay; fan-out
may also publish a post again (a retried batch, a timeline rebuilt under it). No timing
makes those two streams disjoint, so every event with an identity passes one check
here, whatever order they come in.

No task per connection: a connection with something queued joins the node's Flusher,
which writes every such connection out once per loop iteration, so everything queued for
a connection in one iteration leaves in one write(), and one call_soon serves them all.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from gateway.codes import Close
from gateway.latency import DeliveryLatency
from gateway.outgoing import Outgoing, control
from gateway.transport import Transport

log = logging.getLogger(__name__)

PING_TEXT = '{"type":"ping"}'

# How many of the ids a connection sent it remembers (8 bytes each, allocated with its
# first event: an idle connection keeps none). At least what one resume replays
# (gateway/resume.py), so nothing replayed can come again live unnoticed. An event can
# repeat unnoticed only if this many newer ones were sent in between.
SENT_MEMORY = 256


@dataclass(frozen=True, slots=True)
class QueueLimits:
    messages: int
    bytes: int


class Flusher:
    """The connections with something queued, written out together at the end of the
    loop iteration that queued it (a burst of pub/sub messages is dispatched in one
    iteration): one scheduled callback per iteration, not one per connection."""

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending: list[Client] = []
        self._scheduled = False

    def schedule(self, client: Client) -> None:
        self._pending.append(client)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for client in pending:
            try:
                client.flush()
            except Exception:
                # One broken connection must not keep the others' events queued.
                log.exception("flush to user %d failed", client.user_id)


class Client:
    __slots__ = (
        "_flush_scheduled",
        "_flusher",
        "_held",
        "_latency",
        "_limits",
        "_on_close",
        "_queue",
        "_queued_bytes",
        "_sent",
        "_sent_at",
        "_sent_newest",
        "close_code",
        "closing",
        "delivered",
        "high_water",
        "joined",
        "replaying",
        "transport",
        "user_id",
    )

    def __init__(
        self,
        user_id: int,
        transport: Transport,
        limits: QueueLimits,
        on_close: Callable[[Client, Close, str], None],
        latency: DeliveryLatency,
        flusher: Flusher,
    ) -> None:
        self.user_id = user_id
        self.transport = transport
        self._limits = limits
        self._on_close = on_close
        self._latency = latency
        self._flusher = flusher
        self._queue: list[Outgoing] = []
        self._queued_bytes = 0
        self._flush_scheduled = False
        self._held: list[Outgoing] = []
        self._sent: array[int] | None = None  # ring of ids sent, once something is sent
        self._sent_at = 0
        self._sent_newest = 0
        self.replaying = True  # until finish_replay(): live events are held, not sent
        self.closing = False
        self.close_code: Close | None = None
        self.joined = False  # registered with the node (hub, channels, metrics)
        self.delivered = 0
        self.high_water = 0

    def deliver(self, message: Outgoing, live: bool = True) -> None:
        """Queues an event for the node's next flush. A live one is held instead while
        the client catches up; replayed ones (live=False) are sent during the catch-up.
        One function for both: this runs once per message per connection."""
        if self.closing:
            return
        if live and self.replaying:
            self._held.append(message)
            if len(self._held) > self._limits.messages:
                self.close(Close.SLOW_CONSUMER, "too many events while catching up")
            return
        key = message.once_key
        if key is not None and not self._first_time(key):
            return
        queue = self._queue
        queue.append(message)
        queued = self._queued_bytes = self._queued_bytes + len(message.payload)
        pending = queued + self.transport.buffered()
        if pending > self.high_water:
            self.high_water = pending
        limits = self._limits
        if len(queue) > limits.messages or pending > limits.bytes:
            self.close(Close.SLOW_CONSUMER, "client cannot keep up; resume with since")
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.schedule(self)

    def _first_time(self, key: int) -> bool:
        """True, and remembered, unless `key` was already sent on this connection. Ids
        grow with time and live events mostly arrive in order: an id above the newest
        sent cannot have been sent, so the ring is searched only for older ones."""
        sent = self._sent
        if key > self._sent_newest:
            self._sent_newest = key
        elif sent is not None and key in sent:
            return False
        if sent is None:
            sent = self._sent = array("q", bytes(8 * SENT_MEMORY))  # ids are never 0
        sent[self._sent_at] = key
        self._sent_at = (self._sent_at + 1) % SENT_MEMORY
        return True

    def received(self, text: str | None) -> None:
        """A data message from the client (None: binary). The only one allowed is the
        application-level ping, answered with a pong; anything else is a broken client."""
        if text is not None and text.strip() == PING_TEXT:
            self.send_now([control("pong")])
        else:
            self.close(Close.POLICY, f"clients may only send {PING_TEXT}")

    def send_now(self, messages: list[Outgoing]) -> None:
        """Replayed events, sent in order, outside the hold."""
        for message in messages:
            self.deliver(message, live=False)

    def finish_replay(self) -> None:
        """Release live events held during the replay: resume has no gap (they were held
        since before the replay began), and what the replay already sent is dropped by
        deliver()'s check like any other repeat."""
        held, self._held = self._held, []
        self.replaying = False
        for message in held:
            self.deliver(message, live=False)

    def flush(self) -> None:
        """Everything queued, in one write (called by the Flusher)."""
        self._flush_scheduled = False
        if self.closing or not self._queue:
            return
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        self.transport.write(batch)
        self.delivered += len(batch)
        self._latency.written(batch)

    def close(self, code: Close, reason: str) -> None:
        """Stop sending; the connection's handler performs the actual close."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._queue.clear()
        self._held.clear()
        self._on_close(self, code, reason)
