"""The node's live events on a Redis Cluster (REDIS_CLUSTER=true): sharded pub/sub, one
SSUBSCRIBE connection per master (gateway/shard_link.py), each channel subscribed on the
master serving its slot, read from the cluster client's slot map (CLUSTER SLOTS).

Same contract as broker.RedisBroker for the node (subscribe returns once Redis confirmed,
unsubscribe is queued, requests batched), plus what a cluster adds:
- a slot that moves (resharding) makes its old node send `sunsubscribe` for each of its
  channels; the map is refreshed and the channel subscribed where the slot now lives;
- a link that is lost (killed, node down, failover) takes its channels with it; the map
  is refreshed (a replica may have been promoted) and they are subscribed again.
Between the two, events may have been published and missed: `on_gap(channels)` is
called at once with exactly the channels that were live, so only their clients resume.
Never lose an event silently: a channel is live only once its node confirmed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable

import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from core.redis_address import RedisAddress
from gateway.broker import (
    BATCH_DELAY,
    CONNECT_TIMEOUT,
    PING_SECONDS,
    PING_TIMEOUT,
    RECONNECT_DELAYS,
    SUBSCRIBE_TIMEOUT,
    BrokerUnavailable,
)
from gateway.shard_link import Refused, ShardLink

log = logging.getLogger(__name__)
MAP_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


class ShardedBroker:
    def __init__(
        self,
        cluster: RedisCluster,
        on_message: Callable[[bytes, bytes], None],
        on_gap: Callable[[list[bytes]], None],
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
    ) -> None:
        self._cluster = cluster
        # Credentials and TLS as the cluster client has them; each link its master's address.
        self._seed = RedisAddress.of_cluster(cluster)
        self._on_message = on_message
        self._on_gap = on_gap
        self.subscribe_timeout = subscribe_timeout
        self._links: dict[str, ShardLink] = {}  # by master "host:port"
        self._wanted: set[bytes] = set()
        self._home: dict[bytes, ShardLink] = {}  # where a wanted channel was SSUBSCRIBEd
        self._homeless: set[bytes] = set()  # wanted, to be (re)subscribed somewhere
        self._waiters: list[tuple[asyncio.Future[None], list[bytes]]] = []
        self._kick = asyncio.Event()
        self._stale_map = False
        self._failures = 0  # batches in a row that left channels homeless
        self._closed = False
        self.reconnects = 0  # links lost
        self.moves = 0  # channels whose slot moved away under them

    @property
    def connected(self) -> bool:
        return bool(self._links) and not self._stale_map and self._failures == 0

    @property
    def channels(self) -> int:
        return len(self._wanted)

    def nodes(self) -> dict[str, set[bytes]]:
        """Master -> the channels confirmed there (for tests and stats)."""
        return {name: link.confirmed for name, link in self._links.items()}

    async def probe(self) -> None:
        if not self.connected:
            raise ConnectionError("sharded pub/sub: a master's link is down (reconnecting)")

    async def start(self) -> None:
        """One link per master, opened now; raises if the cluster cannot be reached."""
        async with asyncio.timeout(CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT):
            for node in self._cluster.get_primaries():
                await self._link(node.name)

    async def close(self) -> None:
        self._closed = True
        self._kick.set()
        for link in list(self._links.values()):
            link.close()

    # -- requests from the node ---------------------------------------------------------

    async def subscribe(self, channels: Iterable[bytes]) -> None:
        """Returns once every one of `channels` is confirmed by the master serving it;
        raises BrokerUnavailable after `subscribe_timeout`."""
        channels = list(channels)
        for channel in channels:
            if channel not in self._wanted:
                self._wanted.add(channel)
                self._homeless.add(channel)
        if self._live(channels):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, channels))
        self._kick.set()
        try:
            await asyncio.wait_for(waiter, self.subscribe_timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"sharded subscription not confirmed within {self.subscribe_timeout:g} s"
            ) from None

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        leaving: dict[ShardLink, list[bytes]] = {}
        for channel in channels:
            if channel not in self._wanted:
                continue
            self._wanted.discard(channel)
            self._homeless.discard(channel)
            link = self._home.pop(channel, None)
            if link is not None and not link.lost:
                leaving.setdefault(link, []).append(channel)
        for link, gone in leaving.items():
            # A link that is gone took its subscriptions with it.
            with contextlib.suppress(ConnectionError):
                link.unsubscribe(gone)

    def _live(self, channels: list[bytes]) -> bool:
        home = self._home
        for channel in channels:
            if channel not in self._wanted:
                continue  # unsubscribed since: nothing to wait for
            link = home.get(channel)
            if link is None or channel in link.unconfirmed:
                return False
        return True

    # -- long-lived tasks ---------------------------------------------------------------

    async def run_subscriptions(self) -> None:
        """Places homeless channels in batches, one batch at a time."""
        while not self._closed:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(BATCH_DELAY)  # let a burst of connects accumulate
            # Twice: a map read from a node that has not heard of a move yet sends a
            # channel to its old node, which answers MOVED.
            for _ in range(2):
                if self._stale_map:
                    await self._refresh_map()
                if self._homeless:
                    await self._place()
                if not (self._homeless or self._stale_map):
                    break
            self._answer_waiters()
            if self._homeless or self._stale_map:
                self._failures += 1
                delay = RECONNECT_DELAYS[min(self._failures, len(RECONNECT_DELAYS)) - 1]
                log.warning(
                    "sharded pub/sub: %d channels not subscribed yet; retrying in %.1f s",
                    len(self._homeless),
                    delay,
                )
                await asyncio.sleep(delay)
                self._stale_map = True
                self._kick.set()
            else:
                self._failures = 0

    async def run(self) -> None:
        """Keeps every link alive: PING each; a silent one is dropped (then reported)."""
        while not self._closed:
            await asyncio.sleep(PING_SECONDS)
            links = [link for link in self._links.values() if not link.lost]
            await asyncio.gather(*(link.ping(PING_TIMEOUT) for link in links))

    # -- placement ----------------------------------------------------------------------

    async def _place(self) -> None:
        """SSUBSCRIBE every homeless channel on the master of its slot, all masters side by
        side; waits for their answers."""
        groups: dict[str, list[bytes]] = {}
        manager = self._cluster.nodes_manager
        for channel in self._homeless:
            try:
                node = manager.get_node_from_slot(key_slot(channel))
            except redis.exceptions.SlotNotCoveredError:
                self._stale_map = True
                continue
            groups.setdefault(node.name, []).append(channel)
        await asyncio.gather(*(self._place_on(name, group) for name, group in groups.items()))

    async def _place_on(self, name: str, channels: list[bytes]) -> None:
        try:
            link = await self._link(name)
            waits = link.subscribe(channels)
        except (OSError, TimeoutError, Refused) as exc:
            log.warning("sharded pub/sub: cannot reach master %s: %s", name, exc or "timeout")
            self._stale_map = True
            return
        self._homeless.difference_update(channels)
        for channel in channels:
            self._home[channel] = link
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, Refused):
                # MOVED: the slot map was stale; the channel goes where the slot is now.
                log.info("sharded pub/sub: %s answered %s", name, outcome)
                self._stale_map = True
                self._rehome(link, outcome.channels)
            elif isinstance(outcome, BaseException) and not isinstance(outcome, ConnectionError):
                raise outcome
            # ConnectionError: the link was lost; _lost re-homed its channels.

    async def _link(self, name: str) -> ShardLink:
        link = self._links.get(name)
        if link is not None and not link.lost:
            return link
        node = self._cluster.get_node(node_name=name)
        if node is None:
            raise OSError(f"{name} is not in the slot map")
        address = self.address_of(node.host, int(node.port))
        link = ShardLink(name, self._on_message, self._moved, self._lost)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            try:
                await link.open(address)
            except BaseException:
                link.abort()
                raise
        self._links[name] = link
        log.info("sharded pub/sub link to master %s open", name)
        return link

    def address_of(self, host: str, port: int) -> RedisAddress:
        """A master's address, with the cluster client's credentials and TLS."""
        return dataclasses.replace(self._seed, host=host, port=port)

    async def _refresh_map(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except MAP_ERRORS as exc:
            log.warning("sharded pub/sub: slot map not refreshed: %s", exc)
            return
        self._stale_map = False
        masters = {node.name for node in self._cluster.get_primaries()}
        for name, link in list(self._links.items()):
            if name not in masters and not link.channels:
                del self._links[name]  # a master no more (failed over): nothing left on it
                link.close()

    def _answer_waiters(self) -> None:
        waiting, self._waiters = self._waiters, []
        for waiter, channels in waiting:
            if waiter.done():
                continue
            if self._live(channels):
                waiter.set_result(None)
            else:
                self._waiters.append((waiter, channels))

    # -- what the links report ----------------------------------------------------------

    def _rehome(self, link: ShardLink, channels: Iterable[bytes]) -> None:
        for channel in channels:
            if self._home.get(channel) is link:
                del self._home[channel]
            if channel in self._wanted:
                self._homeless.add(channel)
        self._kick.set()

    def _moved(self, link: ShardLink, channel: bytes) -> None:
        """Redis unsubscribed us: the channel's slot has left that node."""
        was_live = channel in link.channels and channel not in link.unconfirmed
        link.channels.discard(channel)
        link.unconfirmed.discard(channel)
        self.moves += 1
        self._stale_map = True
        self._rehome(link, [channel])
        if was_live and channel in self._wanted:
            log.info("sharded pub/sub: %r moved away from %s", channel, link.name)
            self._on_gap([channel])

    def _lost(self, link: ShardLink) -> None:
        if self._links.get(link.name) is link:
            del self._links[link.name]
        live = [c for c in link.confirmed if c in self._wanted]
        self._rehome(link, link.channels)
        link.channels.clear()
        link.unconfirmed.clear()
        self._stale_map = True
        if self._closed:
            return
        self.reconnects += 1
        log.warning("sharded pub/sub link to %s lost (%d live channels)", link.name, len(live))
        self._on_gap(live)
