"""Timeline writes for fan-out: one server-side script call per batch (per hash slot on
Redis Cluster), scripts kept in fanout/lua/*.lua and loaded once at start-up.

This module never touches a socket to a client and never decides who follows whom: it
gets follower ids and a serialized event, and writes/publishes them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from core import keys

LUA_DIR = Path(__file__).with_name("lua")
CHANNEL_PREFIX = keys.user_channel(0)[:-1].encode()  # "u:"


@dataclass(frozen=True, slots=True)
class BatchResult:
    written: int  # timelines the post was added to (a replay adds none)
    published: int  # online followers it was published to live
    offline: list[int]  # offline followers with a push device


def _script(client: aioredis.Redis | RedisCluster, name: str) -> AsyncScript:
    return client.register_script((LUA_DIR / f"{name}.lua").read_text())


def _device_flags(followers: Sequence[int], with_device: Collection[int]) -> bytes:
    return bytes(49 if u in with_device else 48 for u in followers)  # "1" / "0"


def _result(reply: list[Any]) -> BatchResult:
    written, published, offline = reply
    return BatchResult(int(written), int(published), [int(u) for u in offline])


class TimelineWriter:
    """`slack`: a timeline may grow to cap + slack before the next write trims it back
    to the cap (one trim per `slack` writes instead of one per write)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, cap: int, slack: int = 0) -> None:
        self._client = client
        self._cap = cap
        self._limit = cap + slack
        self._cluster = isinstance(client, RedisCluster)
        self._add = _script(client, "timeline_add")
        self._remove = _script(client, "timeline_remove")
        self._add_posts = _script(client, "timeline_add_posts")

    def _groups(self, followers: Sequence[int]) -> list[list[int]]:
        """One group on a single Redis; on a cluster, one per hash slot (a script's keys
        must share a slot; per-user keys hash on the user id)."""
        if not self._cluster:
            return [list(followers)]
        by_slot: dict[int, list[int]] = defaultdict(list)
        for user in followers:
            by_slot[key_slot(keys.timeline(user).encode())].append(user)
        return list(by_slot.values())

    @staticmethod
    def _keys(group: list[int]) -> list[str]:
        return [keys.timeline(u) for u in group] + [keys.presence(u) for u in group]

    def _add_args(
        self, post_id: int, payload: bytes, group: list[int], with_device: Collection[int]
    ) -> list[bytes | int]:
        return [
            keys.timeline_member(post_id),
            self._cap,
            self._limit,
            payload,
            CHANNEL_PREFIX,
            _device_flags(group, with_device),
            *group,
        ]

    async def add(
        self,
        post_id: int,
        payload: bytes,
        followers: Sequence[int],
        with_device: Collection[int] = frozenset(),
    ) -> BatchResult:
        """Adds the post to the followers' timelines and publishes it to those online;
        `offline` lists the offline ones among `with_device`."""
        written, published, offline = 0, 0, list[int]()
        for group in self._groups(followers):
            args = self._add_args(post_id, payload, group, with_device)
            result = _result(await self._add(keys=self._keys(group), args=args))
            written += result.written
            published += result.published
            offline.extend(result.offline)
        return BatchResult(written, published, offline)

    async def add_many(
        self,
        posts: Sequence[tuple[int, bytes, Sequence[int], Collection[int]]],
        own: Sequence[tuple[int, int]],
    ) -> list[BatchResult]:
        """Several posts, each into its own short follower list (post, payload, followers,
        those with a device), plus (author, post) pairs for the authors' own timelines:
        one script call each, all in one pipelined round trip. For small authors the round
        trips, not the writes, were the cost."""
        if not isinstance(self._client, aioredis.Redis):  # a cluster: slot by slot
            for author, post_id in own:
                await self.add_posts(author, [post_id])
            return [await self.add(*post) for post in posts]
        pipe = self._client.pipeline(transaction=False)
        for post_id, payload, followers, with_device in posts:
            group = list(followers)
            args = self._add_args(post_id, payload, group, with_device)
            await self._add(keys=self._keys(group), args=args, client=pipe)
        for author, post_id in own:
            await self._add_posts(
                keys=[keys.timeline(author)],
                args=[self._cap, keys.timeline_member(post_id)],
                client=pipe,
            )
        replies = await pipe.execute()
        return [_result(reply) for reply in replies[: len(posts)]]

    async def remove(self, post_id: int, payload: bytes, followers: Sequence[int]) -> int:
        member = keys.timeline_member(post_id)
        removed = 0
        for group in self._groups(followers):
            args: list[bytes | int] = [member, payload, CHANNEL_PREFIX, *group]
            removed += int(await self._remove(keys=self._keys(group), args=args))
        return removed

    async def add_posts(self, user_id: int, post_ids: Sequence[int]) -> int:
        if not post_ids:
            return 0
        members = [keys.timeline_member(p) for p in post_ids]
        added = await self._add_posts(keys=[keys.timeline(user_id)], args=[self._cap, *members])
        return int(added)

    async def remove_posts(self, user_id: int, post_ids: Sequence[int]) -> int:
        if not post_ids:
            return 0
        members = [keys.timeline_member(p) for p in post_ids]
        return int(await self._client.zrem(keys.timeline(user_id), *members))
