"""Timeline writes against a real Redis Cluster: one script call per hash slot."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from core import events, keys, post_cache
from core.clients import create_producer
from core.ids import IdGenerator
from core.settings import Settings
from core.topics import Topics
from fanout.app import CONSUMER
from fanout.app import create_app as create_fanout
from fanout.timelines import TimelineWriter
from tests.support.cluster import redis_cluster
from tests.support.seed import publish_post, seed_users
from tests.support.wait import eventually

pytestmark = pytest.mark.slow
MakeClient = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(Path(tmp_path_factory.mktemp("cluster"))) as url:
        yield url


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


async def test_batches_spanning_many_slots_are_written_and_published(
    cluster: RedisCluster, cluster_url: str
) -> None:
    followers = list(range(10_000, 10_300))
    slots = {key_slot(keys.timeline(f).encode()) for f in followers}
    assert len(slots) > 100  # the batch really spans slots (and all three nodes)
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    online = followers[::7]
    for user in online:
        await cluster.sadd(keys.presence(user), "gateway-test-node")  # as gateways do
        await cluster.expire(keys.presence(user), 60)
    # Cluster PUBLISH reaches subscribers on any node.
    listener = aioredis.Redis.from_url(cluster_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(*(keys.user_channel(u) for u in online))
    writer = TimelineWriter(cluster, cap=800)
    payload = events.live_post({"id": "77", "text": "cluster"})
    try:
        with_device = set(followers[::3])
        result = await writer.add(77, payload, followers, with_device)
        assert result.written == len(followers) and result.published == len(online)
        assert sorted(result.offline) == sorted(with_device - set(online))
        received = set()
        for _ in range(200):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                assert orjson.loads(message["data"])["id"] == "77"
                received.add(int(message["channel"].decode().split(":")[1]))
            if received == set(online):
                break
        assert received == set(online)
        # A replay writes nothing and publishes nothing again.
        again = await writer.add(77, payload, followers)
        assert again.written == 0 and again.published == 0 and again.offline == []
        for user in followers:
            assert await cluster.zscore(keys.timeline(user), keys.timeline_member(77)) == 0
        removed = await writer.remove(77, events.live_delete(77), followers)
        assert removed == len(followers)
        assert await writer.add_posts(followers[0], [1, 2, 3]) == 3
        assert await writer.remove_posts(followers[0], [1, 2]) == 2
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_fanout_service_writes_timelines_on_a_cluster(
    cluster: RedisCluster,
    cluster_url: str,
    settings: Settings,
    db: asyncpg.Pool,
    aiohttp_client: Callable[
        [web.Application], Awaitable[TestClient[web.Request, web.Application]]
    ],
) -> None:
    on_cluster = dataclasses.replace(
        settings,
        redis_url=cluster_url,
        redis_cluster=True,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="latest",
    )
    ids = IdGenerator(1018)
    author, *followers = await seed_users(db, ids, 201)
    await db.copy_records_to_table(
        "follows", columns=["follower_id", "followee_id"], records=[(f, author) for f in followers]
    )
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    worker = await aiohttp_client(create_fanout(on_cluster))
    await asyncio.wait_for(worker.app[CONSUMER].assigned.wait(), 30)
    producer = await create_producer(settings)
    try:
        post_id = await publish_post(db, producer, Topics.for_settings(settings), ids, author)
    finally:
        await producer.stop()

    async def everywhere() -> bool:
        member = keys.timeline_member(post_id)
        scores = [await cluster.zscore(keys.timeline(u), member) for u in followers]
        return all(score is not None for score in scores)

    await eventually(everywhere, seconds=30, what="fan-out on the cluster")


async def test_a_tombstone_reaches_both_keys_across_nodes(cluster: RedisCluster) -> None:
    """Fan-out's delete marks a post in the cache with one pipeline, whose two keys
    may hash to different nodes."""
    node = cluster.get_node_from_key
    post_id = next(
        p for p in range(1, 10_000) if node(keys.post_cache(p)) != node(keys.post_counters(p))
    )
    await post_cache.tombstone(cluster, post_id)
    assert await cluster.get(keys.post_counters(post_id)) == post_cache.TOMBSTONE
    assert await cluster.get(keys.post_cache(post_id)) == post_cache.TOMBSTONE
    assert await cluster.ttl(keys.post_cache(post_id)) > 0
