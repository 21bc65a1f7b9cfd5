"""One sharded pub/sub connection to one Redis Cluster master (gateway/sharded_broker.py
owns the routing): SSUBSCRIBE/SUNSUBSCRIBE sent in per-slot commands, the replies matched
to them, and the `sunsubscribe` Redis sends on its own when a slot leaves the node.

The wire is broker.py's (PubSubProtocol, hiredis). It never decides where a channel
goes, and never reconnects: a lost link is reported once (`on_lost`), with its channels.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable

import hiredis
from redis.crc import key_slot

from core.redis_address import RedisAddress, pack
from gateway.broker import PubSubProtocol

log = logging.getLogger(__name__)

SSUBSCRIBE, SUNSUBSCRIBE = b"ssubscribe", b"sunsubscribe"


class Refused(ConnectionError):
    """Redis answered a command with an error; `moved` when the slot lives elsewhere."""

    def __init__(self, message: str, channels: frozenset[bytes]) -> None:
        super().__init__(message)
        self.channels = channels
        self.moved = message.startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"))


class _Command:
    """A command sent and the replies still expected for it, in the order Redis answers."""

    __slots__ = ("channels", "done", "kind", "remaining")

    def __init__(self, kind: bytes, channels: Iterable[bytes] = (), awaited: bool = True) -> None:
        self.kind = kind  # b"ssubscribe", b"sunsubscribe", or b"" for AUTH/PING
        self.channels = frozenset(channels)
        self.remaining = set(self.channels) if self.channels else {b""}
        # Only for a command someone awaits: an exception nobody reads is a warning.
        self.done: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if awaited else None
        )

    def settle(self, error: Exception | None = None) -> None:
        if self.done is None or self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


def by_slot(channels: Iterable[bytes]) -> dict[int, list[bytes]]:
    """A sharded (un)subscribe names channels of one slot only (CROSSSLOT otherwise)."""
    groups: dict[int, list[bytes]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel), []).append(channel)
    return groups


class ShardLink:
    def __init__(
        self,
        name: str,
        on_message: Callable[[bytes, bytes], None],
        on_moved: Callable[[ShardLink, bytes], None],
        on_lost: Callable[[ShardLink], None],
    ) -> None:
        self.name = name  # "host:port" of the master, as the slot map names it
        self.channels: set[bytes] = set()  # SSUBSCRIBE sent here, not moved or left since
        self.unconfirmed: set[bytes] = set()  # ... and not confirmed yet
        self._leaving: set[bytes] = set()  # SUNSUBSCRIBE sent, not answered yet
        self._on_message = on_message
        self._on_moved = on_moved
        self._on_lost = on_lost
        self._commands: collections.deque[_Command] = collections.deque()
        self._proto: PubSubProtocol | None = None
        self.lost = False

    async def open(self, address: RedisAddress) -> None:
        def factory() -> PubSubProtocol:
            return PubSubProtocol(self._on_message, self._on_reply, self._lost, b"smessage")

        self._proto = await address.open(factory)
        for command in address.hello(select=False):
            await self._send(pack(*command), _Command(b""))

    @property
    def confirmed(self) -> set[bytes]:
        return self.channels - self.unconfirmed

    def subscribe(self, channels: list[bytes]) -> list[asyncio.Future[None]]:
        """SSUBSCRIBE, one command per slot, in one write; a future per command."""
        commands = [_Command(SSUBSCRIBE, group) for group in by_slot(channels).values()]
        self.channels.update(channels)
        self.unconfirmed.update(channels)
        self._write(b"".join(pack(b"SSUBSCRIBE", *c.channels) for c in commands), commands)
        return [c.done for c in commands if c.done is not None]

    def unsubscribe(self, channels: list[bytes]) -> None:
        """Not awaited: the channels are forgotten here at once."""
        self.channels.difference_update(channels)
        self.unconfirmed.difference_update(channels)
        self._leaving.update(channels)
        commands = [
            _Command(SUNSUBSCRIBE, group, awaited=False) for group in by_slot(channels).values()
        ]
        self._write(b"".join(pack(b"SUNSUBSCRIBE", *c.channels) for c in commands), commands)

    async def ping(self, wait: float) -> None:
        """No answer within `wait` seconds: the link is dropped (and reported lost)."""
        command = _Command(b"")
        try:
            await asyncio.wait_for(self._send(pack(b"PING"), command), wait)
        except TimeoutError:
            log.warning("sharded pub/sub link to %s silent after PING; dropping it", self.name)
            self.abort()
        except ConnectionError:
            pass  # lost: already reported

    def abort(self) -> None:
        if self._proto is not None:
            self._proto.abort()

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    # -- the wire -----------------------------------------------------------------------

    async def _send(self, data: bytes, command: _Command) -> None:
        self._write(data, [command])
        assert command.done is not None
        await command.done

    def _write(self, data: bytes, commands: list[_Command]) -> None:
        if self._proto is None or self.lost:
            raise ConnectionError(f"sharded pub/sub link to {self.name} is closed")
        self._proto.write(data)
        self._commands.extend(commands)

    def _on_reply(self, reply: object) -> None:
        head = self._commands[0] if self._commands else None
        if isinstance(reply, hiredis.ReplyError):
            if head is None:
                log.error("sharded pub/sub: unexpected error from %s: %s", self.name, reply)
                return
            self._commands.popleft()  # one error answers one whole command
            self.channels.difference_update(head.channels)
            self.unconfirmed.difference_update(head.channels)
            head.settle(Refused(str(reply), head.channels))
            return
        if type(reply) is list and reply[0] in (SSUBSCRIBE, SUNSUBSCRIBE):
            kind, channel = reply[0], reply[1]
            if head is not None and head.kind == kind and channel in head.remaining:
                if kind == SSUBSCRIBE:
                    self.unconfirmed.discard(channel)
                else:
                    self._leaving.discard(channel)
                self._answered(head, channel)
            elif kind == SUNSUBSCRIBE:
                # Not asked for: the channel's slot left this node (resharding, failover).
                self._leaving.discard(channel)
                self._on_moved(self, channel)
            return
        if head is not None and head.kind == b"":
            self._answered(head, b"")  # AUTH's OK, PING's pong

    def _answered(self, head: _Command, item: bytes) -> None:
        head.remaining.discard(item)
        if not head.remaining:
            self._commands.popleft()
            head.settle()

    def _lost(self, proto: PubSubProtocol) -> None:
        if self.lost:
            return
        self.lost = True
        for command in self._commands:
            command.settle(ConnectionError(f"link to {self.name} lost"))
        self._commands.clear()
        self._on_lost(self)
