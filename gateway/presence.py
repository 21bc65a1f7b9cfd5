"""Presence: a user with a live connection is "online" in Redis, where fan-out looks to
choose live delivery or push. The key is a set of the nodes holding the user, with a
TTL this node keeps refreshing: a node that dies stops refreshing and its users go
offline within PRESENCE_TTL_SECONDS; a user leaving one node stays online on another.

Every write goes through one task, in pipelines of CHUNK users: a burst of connects or
disconnects (a network blip, a deploy: 100 000 at once) costs a few round trips on one
pooled connection, not one command and one connection each (which ran the pool dry,
"Too many connections", and left users online). One writer also orders the writes: a
user who left and came back before the batch went out stays online.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from core import keys

log = logging.getLogger(__name__)
CHUNK = 1000
BATCH_DELAY = 0.002  # seconds a burst may accumulate before it is written
RETRY_DELAY = 1.0  # after a failed write (Redis away); what failed stays queued
JOIN_TIMEOUT = 10.0  # a connect waits at most this long for its presence write
CLEAR_TIMEOUT = 2.0  # on shutdown


class PresenceUnavailable(ConnectionError):
    """The user's presence could not be written in time (Redis down or stuck)."""


class Presence:
    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        node: str,
        ttl: int,
        connected: Callable[[int], bool],
        users: Callable[[], list[int]],
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        self._client = client
        self._node = node
        self._ttl = ttl
        self._connected = connected
        self._users = users
        self.join_timeout = join_timeout
        self._online: set[int] = set()  # written as online by this node
        self._joining: dict[int, list[asyncio.Future[None]]] = {}
        self._leaving: set[int] = set()
        self._kick = asyncio.Event()
        self._refresh_at = time.monotonic() + ttl / 3

    async def join(self, user: int) -> None:
        """Returns once `user` is marked online here; raises PresenceUnavailable after
        `join_timeout`. Fan-out publishes live only to users marked online, so a resume
        must not ask what it missed before this returned."""
        if user in self._online and user not in self._leaving:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._joining.setdefault(user, []).append(waiter)
        self._kick.set()
        try:
            await asyncio.wait_for(waiter, self.join_timeout)
        except TimeoutError:
            raise PresenceUnavailable(
                f"presence not written within {self.join_timeout:g} s"
            ) from None

    def leave(self, user: int) -> None:
        """Queued, not awaited: cleared with the next batch unless the user is connected
        again by then."""
        self._leaving.add(user)
        self._kick.set()

    async def run(self) -> None:
        """The one writer: joins and leaves as they come, every user refreshed every
        TTL/3. A failed write is retried, never dropped."""
        while True:
            wait = self._refresh_at - time.monotonic()
            if wait > 0 and not self._kick.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
            self._kick.clear()
            await asyncio.sleep(BATCH_DELAY)  # let a burst accumulate
            try:
                await self._write_changes()
                if time.monotonic() >= self._refresh_at:
                    await self._refresh()
                    self._refresh_at = time.monotonic() + self._ttl / 3
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("presence not written (%s); retrying in %.0f s", exc, RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
                self._kick.set()

    async def _write_changes(self) -> None:
        joining, self._joining = self._joining, {}
        leaving, self._leaving = self._leaving, set()
        # Decided now, from who is connected now: a user who left and came back stays
        # online; one who joined and already left is not marked online at all.
        online = [u for u in joining if self._connected(u)]
        offline = [u for u in leaving | joining.keys() if not self._connected(u)]
        # Not "online" from now on: a join while this batch is in flight is written again.
        self._online.difference_update(offline)
        try:
            await self._write(online, offline)
        except BaseException:
            for user, waiters in joining.items():
                self._joining.setdefault(user, [])[:0] = [w for w in waiters if not w.done()]
            self._leaving |= leaving
            raise
        self._online.update(online)
        for waiters in joining.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _refresh(self) -> None:
        users = self._users()
        await self._write([u for u in users if self._connected(u)], [])
        self._online.update(users)

    async def _write(self, online: list[int], offline: list[int]) -> None:
        started, node, ttl = time.monotonic(), self._node, self._ttl
        for start in range(0, max(len(online), len(offline)), CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for user in online[start : start + CHUNK]:
                pipe.sadd(keys.presence(user), node)
                pipe.expire(keys.presence(user), ttl)
            for user in offline[start : start + CHUNK]:
                pipe.srem(keys.presence(user), node)  # empty set: the key is gone
            await pipe.execute()
        if len(online) + len(offline) >= CHUNK:
            log.info(
                "presence: %d online, %d offline in %.0f ms",
                len(online),
                len(offline),
                (time.monotonic() - started) * 1000,
            )

    async def clear(self) -> None:
        """On shutdown: every user this node marked online (or was about to) is removed
        from presence now, not in PRESENCE_TTL_SECONDS. Bounded; failures are logged."""
        users = self._online | self._leaving | self._joining.keys()
        try:
            async with asyncio.timeout(CLEAR_TIMEOUT):
                await self._write([], list(users))
        except (redis.exceptions.RedisError, TimeoutError) as exc:
            log.warning("presence of %d users not cleared on shutdown: %s", len(users), exc)
        self._online.clear()
