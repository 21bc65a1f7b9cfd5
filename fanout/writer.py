"""Timeline writes for fan-out: one server-side script call per batch (per node on
Redis Cluster), with the timeline scripts of core/timelines.py (core/lua/*.lua),
registered once at start-up. The timelines' rules are core/timelines.py's.

This module never touches a socket to a client and never decides who follows whom: it
gets follower ids and a serialized event, and writes/publishes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from core import keys, timelines

LUA_DIR = timelines.LUA_DIR  # read by scripts/bench/fanout_script_cost.py
# A follower's channel as the scripts build it: what goes before and after the id.
CHANNEL_PREFIX, CHANNEL_SUFFIX = (part.encode() for part in keys.user_channel(0).split("0"))
assert keys.user_channel(123) == f"{CHANNEL_PREFIX.decode()}123{CHANNEL_SUFFIX.decode()}"
# Live events: classic pub/sub on a single Redis; sharded pub/sub on a cluster, where a
# classic PUBLISH is copied to every node over the cluster bus (DESIGN.md, known traps).
PUBLISH, SPUBLISH = b"PUBLISH", b"SPUBLISH"
# What a cluster node answers a script that touches a key of a slot it no longer serves
# (a resharding moved it since the slot map was read).
NOT_LOCAL = "non local key"

Args = list[bytes | int | str]


@dataclass(frozen=True, slots=True)
class BatchResult:
    written: int  # timelines the post was added to (a replay adds none)
    published: int  # online followers it was published to live
    offline: list[int]  # offline followers with a push device


def _script(client: aioredis.Redis | RedisCluster, name: str) -> AsyncScript:
    return client.register_script(timelines.script(name))


def _device_flags(followers: Sequence[int], with_device: Collection[int]) -> bytes:
    return bytes(49 if u in with_device else 48 for u in followers)  # "1" / "0"


def _keys(group: Sequence[int]) -> list[str]:
    """A batch script's keys: the timelines, then the presence keys, in group order."""
    return [keys.timeline(u) for u in group] + [keys.presence(u) for u in group]


def _result(reply: list[Any]) -> BatchResult:
    written, published, offline = reply
    return BatchResult(int(written), int(published), [int(u) for u in offline])


class TimelineWriter:
    """`slack`: a timeline may grow to cap + slack before the next write trims it back
    to the cap (one trim per `slack` writes instead of one per write)."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        cap: int,
        slack: int = 0,
        replica_wait_ms: int = 0,
        unreplicated: Counter | None = None,
    ) -> None:
        """`replica_wait_ms`, on a cluster: see _NodeCalls._pipeline; `unreplicated`
        counts the batches a replica had not acknowledged within it."""
        self._client = client
        self._cap = cap
        self._limit = cap + slack
        self._add = _script(client, timelines.ADD)
        self._remove = _script(client, timelines.REMOVE)
        self._add_posts = _script(client, timelines.ADD_POSTS)
        self._nodes = (
            _NodeCalls(client, replica_wait_ms, unreplicated)
            if isinstance(client, RedisCluster)
            else None
        )
        self._publish = PUBLISH if self._nodes is None else SPUBLISH

    def _add_args(
        self, post_id: int, payload: bytes, group: Sequence[int], with_device: Collection[int]
    ) -> Args:
        return [
            keys.timeline_member(post_id),
            self._cap,
            self._limit,
            payload,
            self._publish,
            CHANNEL_PREFIX,
            CHANNEL_SUFFIX,
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
        if self._nodes is None:
            args = self._add_args(post_id, payload, followers, with_device)
            return _result(await self._add(keys=_keys(followers), args=args))
        return (await self._cluster_add([(post_id, payload, followers, with_device)]))[0]

    async def _cluster_add(
        self, posts: Sequence[tuple[int, bytes, Sequence[int], Collection[int]]]
    ) -> list[BatchResult]:
        assert self._nodes is not None
        jobs = [
            (followers, partial(self._add_args, post_id, payload, with_device=with_device))
            for post_id, payload, followers, with_device in posts
        ]
        return [_merged(replies) for replies in await self._nodes.run(self._add, jobs)]

    async def add_many(
        self,
        posts: Sequence[tuple[int, bytes, Sequence[int], Collection[int]]],
        own: Sequence[tuple[int, int]],
    ) -> list[BatchResult]:
        """Several posts, each into its own short follower list (post, payload, followers,
        those with a device), plus (author, post) pairs for the authors' own timelines:
        one script call each (per node on a cluster), all in one pipelined round trip.
        For small authors the round trips, not the writes, were the cost."""
        if self._nodes is not None:
            # The authors' own timelines live on any node: one small call each, all side by
            # side with the followers' batches. Awaited one after another, they cost a
            # stream of small posts a round trip per author.
            own_adds = [self.add_posts(author, [post_id]) for author, post_id in own]
            results, *_ = await asyncio.gather(self._cluster_add(posts), *own_adds)
            return cast(list[BatchResult], results)
        assert isinstance(self._client, aioredis.Redis)
        # `async with`: a pipeline holds its connection from the scripts' SCRIPT EXISTS on,
        # and execute() releases it only after that step; a failure there (Redis down)
        # left it held ("Unclosed Pipeline client" on garbage collection).
        async with self._client.pipeline(transaction=False) as pipe:
            for post_id, payload, followers, with_device in posts:
                args = self._add_args(post_id, payload, followers, with_device)
                await self._add(keys=_keys(followers), args=args, client=pipe)
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

        def args(group: Sequence[int]) -> Args:
            return [member, payload, self._publish, CHANNEL_PREFIX, CHANNEL_SUFFIX, *group]

        if self._nodes is None:
            return int(await self._remove(keys=_keys(followers), args=args(followers)))
        (replies,) = await self._nodes.run(self._remove, [(followers, args)])
        return sum(int(r) for r in replies)

    async def publish(self, channel: str, payload: bytes) -> None:
        """One live event on one channel (an author's, a user's notification): SPUBLISH on
        a cluster, routed by the client to the node of the channel's slot."""
        if self._nodes is None:
            await self._client.publish(channel, payload)
        else:
            await self._client.spublish(channel, payload)

    async def add_posts(self, user_id: int, post_ids: Sequence[int]) -> int:
        if not post_ids:
            return 0
        members = [keys.timeline_member(p) for p in post_ids]
        added = await self._add_posts(keys=[keys.timeline(user_id)], args=[self._cap, *members])
        return int(added)

    async def remove_posts(self, user_id: int, post_ids: Sequence[int]) -> int:
        return await timelines.remove_posts(self._client, user_id, list(post_ids))


def _merged(replies: list[Any]) -> BatchResult:
    results = [_result(reply) for reply in replies]
    return BatchResult(
        sum(r.written for r in results),
        sum(r.published for r in results),
        [u for r in results for u in r.offline],
    )


class _NodeCalls:
    """Batch scripts on Redis Cluster: one call per node, not per hash slot.

    Per-user keys hash on the user id, so a batch of 10 000 followers spans ~7 500 of
    the 16 384 slots: one call per slot was one round trip per follower or two. The
    scripts therefore take their keys in ARGV (undeclared) and each call goes to the
    node that serves all of them. Redis allows a script without a `#!lua` line to touch
    keys of several slots as long as the node serves every one; a resharding between
    reading the slot map and the call makes it fail on the first key that moved, and the
    jobs are then regrouped on a fresh map and run again; a second failure means a slot
    is still migrating, and the jobs run once more one follower at a time (_per_user).
    What ran before the failure is harmless: a replayed add writes and publishes
    nothing, a replayed remove removes nothing and at most tells an online follower
    again that the post is gone.
    """

    def __init__(
        self, client: RedisCluster, replica_wait_ms: int = 0, unreplicated: Counter | None = None
    ) -> None:
        self._client = client
        self._loaded: set[str] = set()  # shas loaded on every primary by this writer
        self._wait_ms = replica_wait_ms
        self._unreplicated = unreplicated

    def _has_replica(self, group: Sequence[int]) -> bool:
        """Whether the node serving `group` (one node's users) has a replica in the map:
        WAIT 1 on a master without one would always wait its whole timeout."""
        holders = self._client.nodes_manager.slots_cache.get(keys.user_slot(group[0]), [])
        return len(holders) > 1

    def _by_node(self, users: Sequence[int]) -> list[tuple[ClusterNode, list[int]]]:
        slots = self._client.nodes_manager
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for user in users:
            node = slots.get_node_from_slot(keys.user_slot(user))
            group = groups.get(node.name)
            if group is None:
                group = groups[node.name] = (node, [])
            group[1].append(user)
        return list(groups.values())

    async def run(
        self,
        script: AsyncScript,
        jobs: Sequence[tuple[Sequence[int], Callable[[Sequence[int]], Args]]],
    ) -> list[list[Any]]:
        """Each job is (users, args for a group of them); returns each job's replies, one
        per node its users are on. All calls go in one pipeline, each node's pipelined
        on one connection and the nodes side by side."""
        if script.sha not in self._loaded:
            await self._client.script_load(script.script)  # every primary
            self._loaded.add(script.sha)
        for _attempt in (1, 2):
            pipe, owner = self._pipeline(script, jobs)
            try:
                replies = await pipe.execute()
            except NoScriptError:
                # A node that restarted or joined has not got the script yet.
                await self._client.script_load(script.script)
            except ResponseError as exc:
                if NOT_LOCAL not in str(exc):
                    raise
                await self._client.nodes_manager.initialize()
            else:
                late = sum(1 for ack in replies[len(owner) :] if int(ack) < 1)
                if late and self._unreplicated is not None:
                    self._unreplicated.inc(late)
                grouped: list[list[Any]] = [[] for _ in jobs]
                for index, reply in zip(owner, replies[: len(owner)], strict=True):
                    grouped[index].append(reply)
                return grouped
        return await self._per_user(script, jobs)

    def _pipeline(
        self,
        script: AsyncScript,
        jobs: Sequence[tuple[Sequence[int], Callable[[Sequence[int]], Args]]],
    ) -> tuple[ClusterPipeline, list[int]]:
        """The jobs' calls, one per node and job, grouped on the current slot map, and
        which job each call is for; then the WAITs."""
        pipe = self._client.pipeline()
        owner: list[int] = []
        waited: dict[str, ClusterNode] = {}
        for index, (users, args_for) in enumerate(jobs):
            for node, group in self._by_node(users):
                args = [*args_for(group), *_keys(group)]
                pipe.execute_command("EVALSHA", script.sha, 0, *args, target_nodes=node)
                owner.append(index)
                if self._wait_ms and self._has_replica(group):
                    waited[node.name] = node
        # Replication is asynchronous: a master that dies before its replica got a write
        # takes it along, and the offsets committed after this batch would not bring it
        # back (a timeline that exists is not rebuilt). One WAIT per node written to,
        # after that node's calls in the same pipeline: no round trip of its own.
        for node in waited.values():
            pipe.execute_command("WAIT", 1, self._wait_ms, target_nodes=node)
        return pipe, owner

    async def _per_user(
        self,
        script: AsyncScript,
        jobs: Sequence[tuple[Sequence[int], Callable[[Sequence[int]], Args]]],
    ) -> list[list[Any]]:
        """The jobs again, one call per user with its two keys declared: what a slot in
        the middle of a migration needs. While a slot is MIGRATING, its source refuses
        an undeclared key that is absent there (already moved, or an offline follower's
        presence key, which never existed), however fresh the slot map, and a reshard
        can last minutes; declared keys get the ASK redirect that redis-py's pipeline
        follows. One round trip per node still, but a call per follower: only for this."""
        pipe = self._client.pipeline()
        owner: list[int] = []
        for index, (users, args_for) in enumerate(jobs):
            for user in users:
                pipe.execute_command("EVALSHA", script.sha, 2, *_keys([user]), *args_for([user]))
                owner.append(index)
        replies = await pipe.execute()
        grouped: list[list[Any]] = [[] for _ in jobs]
        for index, reply in zip(owner, replies, strict=True):
            grouped[index].append(reply)
        return grouped
