"""The node's one Redis pub/sub connection, read by hiredis on its own asyncio Protocol
(on a Redis Cluster: gateway/sharded_broker.py, on the same PubSubProtocol).

- Opened and subscribed at start-up (redis-py opens pub/sub lazily, and concurrent first
  subscribes can each open their own connection and orphan subscriptions).
- Subscribe/unsubscribe requests are batched: a burst of connects costs a few SUBSCRIBE
  commands, not one each. `subscribe()` returns once Redis confirmed the channels (resume
  relies on it to leave no gap), or raises BrokerUnavailable after a bounded wait.
- Every message of one socket read is parsed and dispatched in one `data_received`
  callback: redis-py's `PubSub.get_message` costs ~20 us per message (retry wrapper, a
  timeout context, a debug line formatted per message, a dict per message), which alone
  capped a gateway process at ~45 000 messages/s.
- `run()` keeps the link alive (PING; no answer: the link is dropped) and reconnects with
  back-off, resubscribing every channel. Messages published while the link was down, and
  whatever Redis dropped when it closed us (output buffer limit, CLIENT KILL, restart), are
  lost: `on_gap` is called once per lost link so the node can tell its clients to resume.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable
from typing import cast

import hiredis

from core.redis_address import RedisAddress, pack

log = logging.getLogger(__name__)

BATCH_DELAY = 0.002  # seconds a burst of (un)subscribe requests may accumulate
CONNECT_TIMEOUT = 5.0
SUBSCRIBE_TIMEOUT = 10.0  # a connect waits at most this long for its channels
RESUBSCRIBE_CHUNK = 10_000  # channels per SUBSCRIBE when resubscribing everything
PING_SECONDS = 15.0
PING_TIMEOUT = 15.0  # no answer to a PING within this long: the link is dead
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
FEED_SLICE = 4096  # bytes of a socket read handed to the reply parser at a time


class BrokerUnavailable(ConnectionError):
    """The pub/sub link could not confirm a subscription in time (Redis down or stuck)."""


class _Refused(ConnectionError):
    """Redis answered a command with an error (ACL, NOAUTH, ...)."""


class _Expected:
    """Replies still expected for one command sent, and who waits for them."""

    __slots__ = ("done", "replies")

    def __init__(self, replies: int, done: asyncio.Future[None] | None) -> None:
        self.replies = replies
        self.done = done


class PubSubProtocol(asyncio.Protocol):
    """One pub/sub connection: replies parsed by hiredis; messages (`kind`: b"message", or
    b"smessage" on a sharded link) go to on_message, every other reply to on_reply.
    Shared with gateway/sharded_broker.py."""

    def __init__(
        self,
        on_message: Callable[[bytes, bytes], None],
        on_reply: Callable[[object], None],
        on_lost: Callable[[PubSubProtocol], None],
        kind: bytes = b"message",
    ) -> None:
        self._reader = hiredis.Reader()
        self._kind = kind
        self._on_message = on_message
        self._on_reply = on_reply
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        # Fed in slices: hiredis moves its unread bytes to the front of its buffer each
        # time a reply ends past its first KiB. A 256 KiB read (uvloop's size, what a
        # node that fell behind gets) fed whole moved ~32 MiB while being parsed.
        size, reader = len(data), self._reader
        for start in range(0, size, FEED_SLICE):
            reader.feed(data, start, min(FEED_SLICE, size - start))
            if not self._parse():
                return

    def _parse(self) -> bool:
        """Dispatches every complete reply fed so far; False once the link is dropped."""
        while True:
            try:
                self._drain()
                return True
            except hiredis.ProtocolError:
                log.exception("pub/sub protocol error; dropping the link")
                self.abort()
                return False
            except Exception:
                # A bug in a dispatch target must not kill the node's only link.
                log.exception("pub/sub message dispatch failed")

    def _drain(self) -> None:
        gets, on_message, kind = self._reader.gets, self._on_message, self._kind
        while (reply := gets()) is not False:
            if type(reply) is list and reply[0] == kind:
                on_message(reply[1], reply[2])
            else:
                self._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("pub/sub connection is closed")
        try:
            transport.write(data)
        except RuntimeError as exc:  # uvloop, on a transport closed under us
            raise ConnectionError(f"pub/sub connection is closed: {exc}") from None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RedisBroker:
    def __init__(
        self,
        address: RedisAddress,
        control_channel: str,
        on_message: Callable[[bytes, bytes], None],
        on_gap: Callable[[], None],
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
    ) -> None:
        self._address = address
        self._control = control_channel.encode()
        self._on_message = on_message
        self._on_gap = on_gap
        self.subscribe_timeout = subscribe_timeout
        self._proto: PubSubProtocol | None = None
        self._up = asyncio.Event()  # connected and every wanted channel confirmed
        self._wanted: set[bytes] = {self._control}  # subscribed, or SUBSCRIBE sent
        self._unconfirmed: set[bytes] = set()  # SUBSCRIBE sent, not confirmed yet
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._expected: collections.deque[_Expected] = collections.deque()
        self._kick = asyncio.Event()
        self._closed = False
        self._gap_reported: PubSubProtocol | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def channels(self) -> int:
        return len(self._wanted)

    async def probe(self) -> None:
        """For /readyz: a node without its pub/sub link cannot deliver anything."""
        if not self._up.is_set():
            raise ConnectionError("pub/sub link down (reconnecting)")

    async def start(self) -> None:
        """Open the link and subscribe the control channel; raises if Redis is away."""
        await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT)

    async def close(self) -> None:
        self._closed = True
        self._up.clear()
        self._kick.set()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    # -- requests from the node ---------------------------------------------------------

    async def subscribe(self, channels: Iterable[bytes]) -> None:
        """Returns once every one of `channels` is subscribed (messages published after
        that reach us); raises BrokerUnavailable after `subscribe_timeout`."""
        needed = False
        for channel in channels:
            self._to_unsubscribe.discard(channel)
            if channel not in self._wanted:
                self._to_subscribe.add(channel)
                needed = True
            elif channel in self._unconfirmed:
                needed = True
        if not needed and self._up.is_set():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick.set()
        try:
            await asyncio.wait_for(waiter, self.subscribe_timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"subscription not confirmed within {self.subscribe_timeout:g} s"
            ) from None

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        for channel in channels:
            self._to_subscribe.discard(channel)
            if channel in self._wanted and channel != self._control:
                self._to_unsubscribe.add(channel)
                self._kick.set()

    # -- long-lived tasks ---------------------------------------------------------------

    async def run_subscriptions(self) -> None:
        """Applies queued (un)subscriptions in batches, one at a time, in order."""
        while not self._closed:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(BATCH_DELAY)  # let a burst of connects accumulate
            await self._up.wait()  # a reconnect resubscribes everything first
            subscribe, self._to_subscribe = list(self._to_subscribe), set()
            unsubscribe, self._to_unsubscribe = list(self._to_unsubscribe), set()
            waiters, self._waiters = self._waiters, []
            self._wanted.difference_update(unsubscribe)
            self._wanted.update(subscribe)
            proto = self._proto
            try:
                if unsubscribe:
                    self._send(pack(b"UNSUBSCRIBE", *unsubscribe), len(unsubscribe))
                if subscribe:
                    self._unconfirmed.update(subscribe)
                    await self._send_and_confirm(pack(b"SUBSCRIBE", *subscribe), len(subscribe))
                    self._unconfirmed.difference_update(subscribe)
            except _Refused as exc:
                self._wanted.difference_update(subscribe)
                self._unconfirmed.difference_update(subscribe)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(BrokerUnavailable(str(exc)))
                continue
            except ConnectionError as exc:
                # The link is gone: the reconnect resubscribes all of _wanted (these
                # channels included); the waiters are answered by the first batch after it.
                log.debug("subscription batch interrupted: %s", exc)
                self._waiters[:0] = [w for w in waiters if not w.done()]
                self._kick.set()
                if proto is not None:
                    await asyncio.wait([proto.lost])  # then _up is clear until reconnected
                continue
            except BaseException:
                self._waiters[:0] = [w for w in waiters if not w.done()]
                raise
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run(self) -> None:
        """Keeps the link alive and reconnects it. Messages are dispatched by the protocol
        as they arrive, not here."""
        while not self._closed:
            proto = self._proto
            if proto is None or proto.lost.done():
                if proto is not None and proto is not self._gap_reported:
                    self._gap_reported = proto
                    self._link_lost()
                await self._reconnect()
                continue
            try:
                await asyncio.wait_for(asyncio.shield(proto.lost), PING_SECONDS)
            except TimeoutError:
                await self._ping(proto)

    async def _ping(self, proto: PubSubProtocol) -> None:
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._send(pack(b"PING"), 1, pong)
            done, _ = await asyncio.wait(
                [pong, proto.lost], timeout=PING_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        except ConnectionError:
            return  # the link is closing: run() sees it lost
        if not done:
            log.warning("pub/sub link silent for %.0f s after PING; dropping it", PING_TIMEOUT)
            proto.abort()

    def _lost(self, proto: PubSubProtocol) -> None:
        if proto is self._proto:
            self._up.clear()  # at once: no batch may be answered on a dead link

    def _link_lost(self) -> None:
        self._up.clear()
        self._unconfirmed.clear()
        self._expected.clear()
        self.reconnects += 1
        log.warning("pub/sub link lost; events may have been lost, reconnecting")
        self._on_gap()

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closed:
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.warning("pub/sub reconnect failed (attempt %d): %s", attempt, exc or "timeout")
                if self._proto is not None:
                    self._proto.abort()
                continue
            log.info("pub/sub link re-established, %d channels resubscribed", len(self._wanted))
            return

    async def _connect(self) -> None:
        address = self._address

        def factory() -> PubSubProtocol:
            return PubSubProtocol(self._on_message, self._on_reply, self._lost)

        proto = await asyncio.wait_for(address.open(factory), CONNECT_TIMEOUT)
        self._proto = proto
        self._expected.clear()
        self._unconfirmed.clear()
        for command in address.hello(select=False):  # AUTH: a pub/sub link has no db
            self._send(pack(*command), 1)
        # Pending requests join this resubscription: nothing is subscribed twice.
        self._wanted.update(self._to_subscribe)
        self._to_subscribe.clear()
        self._wanted.difference_update(self._to_unsubscribe)
        self._to_unsubscribe.clear()
        channels = sorted(self._wanted)
        for start in range(0, len(channels), RESUBSCRIBE_CHUNK):
            chunk = channels[start : start + RESUBSCRIBE_CHUNK]
            await self._send_and_confirm(pack(b"SUBSCRIBE", *chunk), len(chunk))
        self._up.set()
        self._kick.set()  # answer whoever waited while the link was down

    # -- the wire -----------------------------------------------------------------------

    def _send(self, command: bytes, replies: int, done: asyncio.Future[None] | None = None) -> None:
        if self._proto is None:
            raise ConnectionError("pub/sub connection is not open")
        self._proto.write(command)
        self._expected.append(_Expected(replies, done))

    async def _send_and_confirm(self, command: bytes, replies: int) -> None:
        """Send, then wait for every reply, or raise ConnectionError if the link drops
        first. No timeout of its own: a stuck link is dropped by the PING check."""
        proto = self._proto
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send(command, replies, confirmed)
        assert proto is not None
        await asyncio.wait([confirmed, proto.lost], return_when=asyncio.FIRST_COMPLETED)
        if not confirmed.done():
            confirmed.cancel()
            raise ConnectionError("pub/sub link lost before Redis confirmed")
        confirmed.result()  # raises what Redis answered with an error

    def _on_reply(self, reply: object) -> None:
        """Replies other than messages: (un)subscribe confirmations, AUTH, pongs."""
        if not self._expected:
            return
        head = self._expected[0]
        if isinstance(reply, hiredis.ReplyError):
            # One error answers the whole command, however many replies it expected.
            self._expected.popleft()
            log.error("pub/sub command refused by Redis: %s", reply)
            if head.done is not None and not head.done.done():
                head.done.set_exception(_Refused(f"Redis refused: {reply}"))
            return
        head.replies -= 1
        if head.replies <= 0:
            self._expected.popleft()
            if head.done is not None and not head.done.done():
                head.done.set_result(None)
