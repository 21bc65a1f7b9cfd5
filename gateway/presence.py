"""Presence: a user with a live connection is "online" in Redis, where fan-out looks to
choose live delivery or push. The key is a set of the nodes holding the user, with a
TTL this node keeps refreshing: a node that dies stops refreshing and its users go
offline within PRESENCE_TTL_SECONDS; a user leaving one node stays online on another."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
import redis.exceptions

from core import keys

log = logging.getLogger(__name__)
CHUNK = 1000


class Presence:
    def __init__(self, client: aioredis.Redis, node: str, ttl: int) -> None:
        self._client = client
        self._node = node
        self._ttl = ttl

    async def online(self, users: Iterable[int]) -> None:
        batch = list(users)
        for start in range(0, len(batch), CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for user in batch[start : start + CHUNK]:
                pipe.sadd(keys.presence(user), self._node)
                pipe.expire(keys.presence(user), self._ttl)
            await pipe.execute()

    async def offline(self, user: int) -> None:
        await self._client.srem(keys.presence(user), self._node)  # empty set: key gone

    async def keep_fresh(self, users: Callable[[], list[int]]) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self.online(users())
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("presence refresh failed: %s", exc)
