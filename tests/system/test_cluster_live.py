"""Live delivery on a real 3-master Redis Cluster with sharded pub/sub (REDIS_CLUSTER=true):
the API server, the fan-out worker and the gateway, wired as in production, every Redis
use on the cluster. A follower's WebSocket gets each post exactly once through the
master of its channel's slot, deletes and pull-tier posts too; a slot moved while posts
flow, or a master's subscriber link killed, makes only the clients concerned resume, and
after resuming they have missed nothing and seen nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from core import keys
from core.settings import Settings
from gateway.codes import Close
from tests.support.api import MakeClient, post, sign_up
from tests.support.cluster_live import (
    connect,
    following,
    master_of,
    on_other_masters,
    posting,
    readers_on_every_master,
)
from tests.support.cluster_ops import move_slot
from tests.support.in_process import InProcess, in_process_system
from tests.support.live import ws_json

pytestmark = pytest.mark.cluster
WS = aiohttp.ClientWebSocketResponse


@pytest.fixture
async def system(cluster_settings: Settings, aiohttp_client: MakeClient) -> InProcess:
    return await in_process_system(cluster_settings, aiohttp_client)


async def shard_channels(cluster: RedisCluster, node: ClusterNode) -> set[str]:
    found = await cluster.execute_command("PUBSUB SHARDCHANNELS", target_nodes=node)
    return {c.decode() for c in found}


async def next_event(ws: WS, timeout: float = 20.0) -> dict[str, Any]:
    event: dict[str, Any] = await ws_json(ws, timeout)
    return event


async def publishes(cluster: RedisCluster) -> dict[str, int]:
    """PUBLISH and SPUBLISH calls on all masters since their last CONFIG RESETSTAT
    (scripts' calls included)."""
    found = {"publish": 0, "spublish": 0}
    for master in cluster.get_primaries():
        stats = await cluster.info("commandstats", target_nodes=master)
        for command in found:
            found[command] += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return found


async def assert_spread(cluster: RedisCluster, channels: list[str]) -> None:
    """Each channel subscribed on the master of its slot only, and every master used."""
    used = set()
    for master in cluster.get_primaries():
        here = await shard_channels(cluster, master) & set(channels)
        assert here == {c for c in channels if master_of(cluster, c).name == master.name}
        if here:
            used.add(master.name)
    assert len(used) == 3


async def test_a_post_and_its_delete_reach_followers_on_every_master_exactly_once(
    system: InProcess, cluster: RedisCluster
) -> None:
    api, gw = system.api, system.gw
    author = await sign_up(api)
    readers = await readers_on_every_master(api, cluster, author)
    sockets = [await connect(gw, r) for r in readers]
    await assert_spread(cluster, [keys.user_channel(int(r.id)) for r in readers])
    ready = await gw.get("/readyz")
    assert ready.status == 200 and (await ready.json())["checks"]["pubsub"] == "ok"
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)

    first = await post(api, author, "hello cluster")
    for ws in sockets:
        event = await next_event(ws)
        assert (event["type"], event["id"]) == ("post", first)
    resp = await api.delete(f"/v1/posts/{first}", headers=author.auth)
    assert resp.status in (200, 204), await resp.text()
    for ws in sockets:
        assert await next_event(ws) == {"type": "delete", "id": first}
    # Nothing came twice: the next thing each socket gets is the next post.
    second = await post(api, author, "second")
    for ws in sockets:
        assert (await next_event(ws))["id"] == second
        await ws.close()
    # Classic PUBLISH, copied to every node over the cluster bus, is not used on a cluster.
    assert (await publishes(cluster))["publish"] == 0


async def test_a_pull_tier_authors_post_arrives_through_its_own_channel(
    system: InProcess, cluster: RedisCluster, db: asyncpg.Pool
) -> None:
    api, gw = system.api, system.gw
    star = await sign_up(api)
    # Pull tier before anyone follows: fan-out caches an author's tier when it handles a
    # follow, and would otherwise still push this post into timelines.
    await db.execute("UPDATE users SET fanout_tier = 'pull' WHERE id = $1", int(star.id))
    readers = await readers_on_every_master(api, cluster, star)
    sockets = [await connect(gw, r) for r in readers]
    channel = keys.author_channel(int(star.id))
    for master in cluster.get_primaries():
        subscribed = channel in await shard_channels(cluster, master)
        assert subscribed == (master.name == master_of(cluster, channel).name), master.name

    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    first = await post(api, star, "to all my readers")
    second = await post(api, star, "again")
    for ws in sockets:
        assert [(await next_event(ws))["id"] for _ in range(2)] == [first, second]
        await ws.close()
    # One SPUBLISH per post on the author's channel, whatever the number of readers.
    assert await publishes(cluster) == {"publish": 0, "spublish": 2}


async def test_a_slot_moved_while_posts_flow_loses_and_repeats_nothing(
    system: InProcess, cluster: RedisCluster
) -> None:
    api, gw = system.api, system.gw
    author = await sign_up(api)
    readers = await readers_on_every_master(api, cluster, author)
    mover = readers[0]
    channel = keys.user_channel(int(mover.id))
    source = master_of(cluster, channel)
    bystander = on_other_masters(cluster, readers, source)[0]
    target = master_of(cluster, keys.user_channel(int(bystander.id)))
    count = 12
    async with following(gw, (mover, bystander), count) as live:
        flow = asyncio.create_task(posting(api, author, count, 0.15))
        try:
            async with asyncio.timeout(30):
                while len(live.views[mover.id].seen) < 3:
                    await asyncio.sleep(0.02)
            await move_slot(cluster, key_slot(channel.encode()), source, target)
            await cluster.nodes_manager.initialize()
            made = await flow
            await live.done(60)
        finally:
            flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(flow, return_exceptions=True)
    views = live.views

    assert views[mover.id].seen == made  # nothing missed, nothing twice, in order
    assert views[mover.id].closes == [Close.RESUME]  # told to resume, once
    assert views[bystander.id].seen == made and views[bystander.id].closes == []
    assert channel not in await shard_channels(cluster, source)


async def test_a_killed_master_link_resumes_only_that_masters_clients(
    system: InProcess, cluster: RedisCluster
) -> None:
    api, gw = system.api, system.gw
    author = await sign_up(api)
    readers = await readers_on_every_master(api, cluster, author)
    victim_user = readers[0]
    victim = master_of(cluster, keys.user_channel(int(victim_user.id)))
    others = on_other_masters(cluster, readers, victim)
    count = 6
    async with following(gw, (victim_user, *others), count) as live:
        first = await post(api, author, "before the kill")
        await live.all_saw([first])
        killed = await cluster.execute_command("CLIENT KILL", "TYPE", "pubsub", target_nodes=victim)
        assert killed >= 1
        made = [first, *(await posting(api, author, count - 1, 0.05))]
        await live.done(60)
    views = live.views

    assert views[victim_user.id].seen == made and views[victim_user.id].closes == [Close.RESUME]
    for other in others:
        assert views[other.id].seen == made and views[other.id].closes == [], other.id
