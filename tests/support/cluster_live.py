"""Live clients of a clustered system for tests: followers whose channels cover every
master, a WebSocket connect that waits until the gateway holds the connection, and a
reader that resumes after a close as a client does, recording what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from core import keys
from gateway.codes import Close
from gateway.endpoints import NODE
from tests.support.api import Client, User, follow, post, sign_up

WS = aiohttp.ClientWebSocketResponse
# Closes after which a client resumes with ?since= (gateway/codes.py RECONNECT): at once
# after 4010, after a short back-off after 1013 (Redis or the API server away).
RESUMED_AFTER = {Close.RESUME: 0.0, Close.TRY_AGAIN: 0.5}


def master_of(cluster: RedisCluster, channel: str) -> ClusterNode:
    return cluster.nodes_manager.get_node_from_slot(key_slot(channel.encode()))


def on_other_masters(cluster: RedisCluster, readers: list[User], node: ClusterNode) -> list[User]:
    """The readers whose own channel is on another master than `node`."""
    return [
        r for r in readers if master_of(cluster, keys.user_channel(int(r.id))).name != node.name
    ]


async def readers_on_every_master(api: Client, cluster: RedisCluster, author: User) -> list[User]:
    """Followers of `author` whose channels cover all three masters (ids are time-based,
    so their slots are spread but not chosen), each with a timeline to be written."""
    masters = {m.name for m in cluster.get_primaries()}
    readers: list[User] = []
    covered: set[str] = set()
    while covered != masters or len(readers) < 4:
        assert len(readers) < 40, "40 users never covered three masters"
        reader = await sign_up(api)
        await follow(api, reader, author)
        resp = await api.get("/v1/feed", headers=reader.auth)  # the timeline exists
        assert resp.status == 200, await resp.text()
        readers.append(reader)
        covered.add(master_of(cluster, keys.user_channel(int(reader.id))).name)
    return readers


async def connect(gw: Client, user: User, since: str | None = None) -> WS:
    params = {"access_token": user.token} | ({"since": since} if since else {})
    ws = await gw.ws_connect("/v1/stream", params=params)
    node = gw.app[NODE]
    async with asyncio.timeout(20):
        while node.hub.live_connections(int(user.id)) < 1:
            await asyncio.sleep(0.02)
    return ws


class Reader:
    """One follower's live view: what it was sent, in order, across reconnects."""

    def __init__(self, gw: Client, user: User) -> None:
        self.gw, self.user = gw, user
        self.seen: list[str] = []
        self.closes: list[int] = []

    async def follow_until(self, wanted: int, ws: WS) -> None:
        """Reads posts until `wanted` were seen, resuming after a 4010 (or a 1013, after a
        back-off) as a client does."""
        while len(self.seen) < wanted:
            message = await ws.receive(timeout=30)
            if message.type is aiohttp.WSMsgType.TEXT:
                event = message.json()
                assert event["type"] == "post", event
                self.seen.append(event["id"])
                continue
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
            self.closes.append(int(message.data))
            assert message.data in RESUMED_AFTER, message
            await asyncio.sleep(RESUMED_AFTER[Close(message.data)])
            since = {"since": self.seen[-1]} if self.seen else {}
            ws = await self.gw.ws_connect(
                "/v1/stream", params={"access_token": self.user.token} | since
            )
        await ws.close()


async def posting(api: Client, author: User, count: int, pause: float) -> list[str]:
    made = []
    for i in range(count):
        made.append(await post(api, author, f"flowing {i}"))
        await asyncio.sleep(pause)
    return made


@dataclass(frozen=True, slots=True)
class Following:
    views: dict[str, Reader]  # by user id
    tasks: list[asyncio.Task[None]]

    async def all_saw(self, ids: list[str]) -> None:
        """Until every reader has seen exactly `ids` (bounded)."""
        async with asyncio.timeout(30):
            while not all(v.seen == ids for v in self.views.values()):
                await asyncio.sleep(0.02)

    async def done(self, seconds: float) -> None:
        """Until every reader has seen the posts it follows until (bounded)."""
        await asyncio.wait_for(asyncio.gather(*self.tasks), seconds)


@contextlib.asynccontextmanager
async def following(gw: Client, users: Sequence[User], count: int) -> AsyncIterator[Following]:
    """Each of `users` on a WebSocket of their own, read (resuming after a close) until
    `count` posts were seen; the readers stopped and the sockets closed on the way out."""
    views = {u.id: Reader(gw, u) for u in users}
    sockets = [(views[u.id], await connect(gw, u)) for u in users]
    tasks = [asyncio.create_task(view.follow_until(count, ws)) for view, ws in sockets]
    try:
        yield Following(views, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, ws in sockets:
            await ws.close()
