"""Timeline writes against a real Redis Cluster: one script call per node, keys of many
hash slots in each, and a resharding in the middle."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from core import events, keys, post_cache
from core.clients import (
    CONNECT_ERRORS,
    HiredisPackingConnection,
    build_redis_cluster,
    create_producer,
)
from core.ids import IdGenerator
from core.service import OPS, node_name
from core.settings import Settings
from core.topics import Topics
from fanout.app import CONSUMER
from fanout.app import create_app as create_fanout
from fanout.writer import TimelineWriter
from scripts.redis_cluster import redis_cluster
from tests.support.api import MakeClient
from tests.support.cluster_ops import begin_migration, finish_migration, migrate_keys, move_slot
from tests.support.seed import publish_post, seed_users
from tests.support.wait import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def node_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The node `cluster` maps `key` to (redis-py allows for none)."""
    node = cluster.get_node_from_key(key)
    assert node is not None, key
    return node


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(Path(tmp_path_factory.mktemp("cluster"))) as local:
        yield local.url


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = build_redis_cluster(cluster_url)
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
    # Live events are sharded on a cluster: each follower's channel is SPUBLISHed on the
    # node of its slot, where a sharded subscriber (SSUBSCRIBE) gets it.
    pubsub = cluster.pubsub()
    await pubsub.ssubscribe(*(keys.user_channel(u) for u in online))
    writer = TimelineWriter(cluster, cap=800)
    payload = events.live_post({"id": "77", "text": "cluster"})
    try:
        with_device = set(followers[::3])
        await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
        result = await writer.add(77, payload, followers, with_device)
        assert result.written == len(followers) and result.published == len(online)
        # No classic PUBLISH anywhere (it would be copied to every node); SPUBLISH on each.
        for node in cluster.get_primaries():
            stats = await cluster.info("commandstats", target_nodes=node)
            assert "cmdstat_publish" not in stats, node.name
            assert int(stats["cmdstat_spublish"]["calls"]) > 0, node.name
        assert sorted(result.offline) == sorted(with_device - set(online))
        channels = {keys.user_channel(u).encode(): u for u in online}
        received: list[int] = []
        for _ in range(400):
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.05)
            if message:
                assert message["type"] == "smessage"
                assert orjson.loads(message["data"])["id"] == "77"
                received.append(channels[message["channel"]])
            if len(received) == len(online):
                break
        assert sorted(received) == sorted(online)  # each once
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


async def test_fanout_service_writes_timelines_on_a_cluster(
    cluster: RedisCluster,
    cluster_url: str,
    settings: Settings,
    db: asyncpg.Pool,
    aiohttp_client: MakeClient,
) -> None:
    # A port (it only names the node here) that puts the worker's stats key on another
    # node than the one REDIS_URL names.
    url_node = next(n for n in cluster.get_nodes() if cluster_url.endswith(f":{n.port}/0"))
    port = next(
        p
        for p in range(20_000, 30_000)
        if node_of(cluster, keys.node_stats("fanout", node_name("fanout", p))).name != url_node.name
    )
    on_cluster = dataclasses.replace(
        settings,
        redis_url=cluster_url,
        redis_cluster=True,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="latest",
        fanout_port=port,
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

    # The worker's stats for the dashboard go through the cluster client too; through
    # the node REDIS_URL names they would fail on MOVED whenever another node has the key.
    stats_key = keys.node_stats("fanout", worker.app[OPS].node)

    async def reported() -> bool:
        return await cluster.get(stats_key) is not None

    await eventually(reported, seconds=10, what="fan-out stats on the cluster")


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


async def _script_calls(cluster: RedisCluster) -> dict[str, int]:
    """EVALSHA calls per node since its last CONFIG RESETSTAT."""
    calls = {}
    for node in cluster.get_primaries():
        stats = await cluster.info("commandstats", target_nodes=node)
        calls[node.name] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return calls


async def test_a_batch_is_one_script_call_per_node(cluster: RedisCluster) -> None:
    followers = list(range(20_000, 22_000))
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    writer = TimelineWriter(cluster, cap=800)
    posts = [(p, events.live_post({"id": str(p)}), followers, frozenset[int]()) for p in (91, 92)]
    await writer.add(90, events.live_post({"id": "90"}), followers)  # scripts loaded
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)

    assert (await writer.add(93, events.live_post({"id": "93"}), followers)).written == 2_000
    # 2 000 followers hash to ~1 800 slots, on each of the three nodes.
    assert sorted((await _script_calls(cluster)).values()) == [1, 1, 1]
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    results = await writer.add_many(posts, own=[])
    assert [r.written for r in results] == [2_000, 2_000]
    assert sorted((await _script_calls(cluster)).values()) == [2, 2, 2]
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    assert await writer.remove(93, events.live_delete(93), followers) == 2_000
    assert sorted((await _script_calls(cluster)).values()) == [1, 1, 1]


async def test_authors_own_timelines_are_written_with_the_batches(cluster: RedisCluster) -> None:
    followers = list(range(23_000, 23_200))
    authors = list(range(24_000, 24_040))  # their timelines hash to every node
    for user in followers + authors:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    writer = TimelineWriter(cluster, cap=800)
    posts = [(95, events.live_post({"id": "95"}), followers, frozenset[int]())]
    own = [(author, 1_000 + i) for i, author in enumerate(authors)]

    results = await writer.add_many(posts, own=own)

    assert [r.written for r in results] == [200]
    for author, post_id in own:
        member = keys.timeline_member(post_id)
        assert await cluster.zscore(keys.timeline(author), member) is not None, author


async def test_a_resharding_under_a_writer_loses_no_timeline_entry(
    cluster: RedisCluster, cluster_url: str
) -> None:
    followers = list(range(30_000, 30_500))
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    stale = build_redis_cluster(cluster_url)  # the writer's map is read before the move
    await stale.initialize()
    try:
        writer = TimelineWriter(stale, cap=800)
        await writer.add(40, events.live_post({"id": "40"}), followers)
        moved = followers[len(followers) // 2]
        slot = key_slot(keys.timeline(moved).encode())
        owner = node_of(cluster, keys.timeline(moved))
        target = next(n for n in cluster.get_primaries() if n.name != owner.name)
        await move_slot(cluster, slot, owner, target)

        result = await writer.add(41, events.live_post({"id": "41"}), followers)
        # The node that lost the slot refused the first call part-way; the retry on the
        # new map wrote the rest, and what the first call wrote stayed written once.
        assert result.written <= len(followers)
        member = keys.timeline_member(41)
        for user in followers:
            assert await cluster.zscore(keys.timeline(user), member) == 0, user
            assert await cluster.zcard(keys.timeline(user)) == 3  # sentinel, 40, 41
        assert node_of(stale, keys.timeline(moved)).name == target.name
    finally:
        await stale.aclose()


async def test_a_slot_in_the_middle_of_a_migration_is_waited_out_never_dead_lettered(
    cluster: RedisCluster,
) -> None:
    """While a slot is MIGRATING, its source refuses the undeclared keys it no longer
    (or never) holds, whatever the slot map. The writer then calls once per follower with
    the keys declared: a follower whose keys all moved, or all stayed, is written through
    the ASK redirect; one whose keys are split (an offline follower's presence key never
    exists) gets TRYAGAIN until the slot's keys have moved. That failure must be one the
    consumer waits out (CONNECT_ERRORS), not a poison event it dead-letters, and the
    retry after the move writes every timeline."""
    followers = list(range(50_000, 50_400))
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    moving = followers[0]
    slot = key_slot(keys.timeline(moving).encode())
    source = node_of(cluster, keys.timeline(moving))
    target = next(n for n in cluster.get_primaries() if n.name != source.name)
    same_slot = [u for u in range(60_000, 400_000) if keys.user_slot(u) == slot][:3]
    assert len(same_slot) == 3
    for user in same_slot:  # more of the slot's timelines: one moves first, others stay
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    followers += same_slot
    writer = TimelineWriter(cluster, cap=800)
    payload = events.live_post({"id": "42"})
    await begin_migration(cluster, slot, source, target)
    try:
        (name,) = await cluster.execute_command(
            "CLUSTER GETKEYSINSLOT", slot, 1, target_nodes=source
        )
        await cluster.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5_000, "KEYS", name, target_nodes=source
        )
        with pytest.raises(CONNECT_ERRORS):
            await writer.add(42, payload, followers)
    finally:
        await migrate_keys(cluster, slot, source, target)
        await finish_migration(cluster, slot, target)
    result = await writer.add(42, payload, followers)  # the consumer's retry
    assert result.written <= len(followers)
    member = keys.timeline_member(42)
    for user in followers:
        assert await cluster.zscore(keys.timeline(user), member) == 0, user


async def test_the_cluster_client_packs_with_hiredis_on_every_node(cluster: RedisCluster) -> None:
    """A batch's call per node has ~30 000 arguments: redis-py's Python packer took
    30-40 ms for one (core/clients.build_redis_cluster)."""
    await cluster.set("packing-check", 1)
    nodes = cluster.get_nodes()
    assert len(nodes) == 3
    assert all(node.connection_class is HiredisPackingConnection for node in nodes)


async def test_user_slot_is_the_slot_redis_gives_per_user_keys(cluster: RedisCluster) -> None:
    users = [0, 1, 42, 9_999, 2**53 + 7, 7_291_028_374_650_123_456]
    for user in users:
        for key in (
            keys.timeline(user),
            keys.presence(user),
            keys.user_channel(user),
            keys.author_channel(user),
        ):
            assert await cluster.cluster_keyslot(key) == keys.user_slot(user), key
