"""The gateway's sharded pub/sub (gateway/sharded_broker.py) against a real 3-master Redis
Cluster: channels on the master of their slot, one link per master, a slot moved under a
subscription, a killed link, a stale slot map. Events come from SPUBLISH as fan-out sends
them; nothing may be lost without a gap reported for exactly the channels concerned."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from core import keys
from core.clients import build_redis_cluster
from gateway.shard_link import by_slot
from gateway.sharded_broker import ShardedBroker
from scripts.redis_cluster import LocalCluster, redis_cluster
from tests.support.cluster_ops import move_slot
from tests.support.wait import eventually

pytestmark = pytest.mark.cluster


@dataclass
class Heard:
    messages: Counter[tuple[bytes, bytes]] = field(default_factory=Counter)
    gaps: list[list[bytes]] = field(default_factory=list)

    def message(self, channel: bytes, payload: bytes) -> None:
        self.messages[channel, payload] += 1

    def gap(self, channels: list[bytes]) -> None:
        self.gaps.append(sorted(channels))


@dataclass
class Running:
    broker: ShardedBroker
    heard: Heard


@pytest.fixture
async def running(local_cluster: LocalCluster) -> AsyncIterator[Running]:
    # A client of its own: its slot map goes stale when a test moves a slot.
    client = build_redis_cluster(local_cluster.url)
    await client.initialize()
    heard = Heard()
    broker = ShardedBroker(client, heard.message, heard.gap)
    await broker.start()
    tasks = [asyncio.create_task(broker.run()), asyncio.create_task(broker.run_subscriptions())]
    yield Running(broker, heard)
    await broker.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


def user_channels(count: int) -> list[bytes]:
    """Channels of users no other test uses (the cluster is shared by the session)."""
    base = 10**12 + (uuid.uuid4().int % 10**9) * 1000
    return [keys.user_channel(base + i).encode() for i in range(count)]


def master_of(cluster: RedisCluster, channel: bytes) -> ClusterNode:
    return cluster.nodes_manager.get_node_from_slot(key_slot(channel))


async def shard_channels(cluster: RedisCluster, node: ClusterNode) -> set[bytes]:
    found = await cluster.execute_command("PUBSUB SHARDCHANNELS", target_nodes=node)
    return set(found)


async def publish_all(cluster: RedisCluster, channels: list[bytes], payload: bytes) -> None:
    for channel in channels:
        assert await cluster.spublish(channel, payload) == 1, channel


async def heard_once(heard: Heard, channels: list[bytes], payload: bytes) -> None:
    async def arrived() -> bool:
        return all(heard.messages[c, payload] >= 1 for c in channels)

    await eventually(arrived, seconds=10, what=f"{payload!r} on {len(channels)} channels")
    assert all(heard.messages[c, payload] == 1 for c in channels), "an event came twice"


def test_sharded_commands_name_one_slot_each() -> None:
    # SSUBSCRIBE of channels of two slots is refused (CROSSSLOT): one command per slot.
    same_slot = [b"x:{7}", b"y:{7}"]
    groups = by_slot([*same_slot, b"u:{8}", b"u:{9}"])
    assert sorted(groups.values()) == sorted([same_slot, [b"u:{8}"], [b"u:{9}"]])
    assert all(len({key_slot(c) for c in group}) == 1 for group in groups.values())


def test_a_users_channel_shares_the_slot_of_their_keys() -> None:
    for user in (1, 42, 2**53 + 7):
        slot = keys.user_slot(user)
        assert key_slot(keys.user_channel(user).encode()) == slot
        assert key_slot(keys.author_channel(user).encode()) == slot
        assert key_slot(keys.timeline(user).encode()) == slot


async def test_channels_are_subscribed_on_their_masters_one_link_each(
    running: Running, cluster: RedisCluster
) -> None:
    channels = user_channels(60)
    await running.broker.subscribe(channels)

    masters = cluster.get_primaries()
    assert set(running.broker.nodes()) == {m.name for m in masters}
    for master in masters:
        expected = {c for c in channels if master_of(cluster, c).name == master.name}
        assert expected, "60 channels spread over every master"
        assert (await shard_channels(cluster, master)) & set(channels) == expected
        assert running.broker.nodes()[master.name] == expected
    await publish_all(cluster, channels, b"one")
    await heard_once(running.heard, channels, b"one")
    assert running.heard.gaps == []


async def test_an_unsubscribed_channel_leaves_its_master(
    running: Running, cluster: RedisCluster
) -> None:
    channels = user_channels(10)
    await running.broker.subscribe(channels)
    gone, kept = channels[:4], channels[4:]
    running.broker.unsubscribe(gone)

    async def left() -> bool:
        everywhere = set()
        for master in cluster.get_primaries():
            everywhere |= await shard_channels(cluster, master)
        return not everywhere & set(gone) and set(kept) <= everywhere

    await eventually(left, seconds=10, what="SUNSUBSCRIBE on the masters")
    await publish_all(cluster, kept, b"kept")
    await heard_once(running.heard, kept, b"kept")
    assert not [c for c, _ in running.heard.messages if c in gone]


async def test_a_moved_slot_is_followed_and_only_its_channels_report_a_gap(
    running: Running, cluster: RedisCluster
) -> None:
    channels = user_channels(30)
    await running.broker.subscribe(channels)
    moved = channels[0]
    source = master_of(cluster, moved)
    target = next(m for m in cluster.get_primaries() if m.name != source.name)
    # Channels that share the slot move with it (a slot, not a channel, migrates).
    slot = key_slot(moved)
    with_it = sorted(c for c in channels if key_slot(c) == slot)

    await move_slot(cluster, slot, source, target)
    await cluster.nodes_manager.initialize()

    async def resubscribed() -> bool:
        return set(with_it) <= running.broker.nodes().get(target.name, set()) and set(
            with_it
        ) <= await shard_channels(cluster, target)

    await eventually(resubscribed, seconds=10, what="the moved channel subscribed on its new node")
    assert running.heard.gaps == [with_it]
    assert not (await shard_channels(cluster, source)) & set(with_it)
    await publish_all(cluster, channels, b"after the move")
    await heard_once(running.heard, channels, b"after the move")
    assert running.broker.moves == len(with_it)
    assert running.broker.connected


async def test_a_killed_link_reports_its_own_channels_and_comes_back(
    running: Running, cluster: RedisCluster
) -> None:
    channels = user_channels(60)
    await running.broker.subscribe(channels)
    victim = master_of(cluster, channels[0])
    on_victim = sorted(c for c in channels if master_of(cluster, c).name == victim.name)
    assert 0 < len(on_victim) < len(channels)

    killed = await cluster.execute_command("CLIENT KILL", "TYPE", "pubsub", target_nodes=victim)
    assert killed >= 1

    async def back() -> bool:
        return running.broker.connected and set(on_victim) <= await shard_channels(cluster, victim)

    await eventually(back, seconds=15, what="the link to the master reopened and resubscribed")
    assert running.heard.gaps == [on_victim]  # the other masters' clients untouched
    assert running.broker.reconnects == 1
    await publish_all(cluster, channels, b"after the kill")
    await heard_once(running.heard, channels, b"after the kill")


async def test_a_subscription_on_a_stale_slot_map_goes_where_the_slot_is(
    running: Running, cluster: RedisCluster
) -> None:
    (channel,) = user_channels(1)
    source = master_of(cluster, channel)
    target = next(m for m in cluster.get_primaries() if m.name != source.name)
    await move_slot(cluster, key_slot(channel), source, target)  # the broker's map: source
    await cluster.nodes_manager.initialize()

    await running.broker.subscribe([channel])

    assert channel in await shard_channels(cluster, target)
    assert running.heard.gaps == []  # never live before: nothing to resume
    await publish_all(cluster, [channel], b"found")
    await heard_once(running.heard, [channel], b"found")


@pytest.mark.slow
async def test_a_failed_over_master_is_followed_to_its_promoted_replica(
    tmp_path: Path,
) -> None:
    """A master dies (SIGKILL, as a crashed machine); its replica is promoted. Its
    channels are reported once, then subscribed on the new master; the other masters'
    channels are untouched throughout."""
    with redis_cluster(tmp_path, replicas=1, node_timeout_ms=1000) as local:
        client = build_redis_cluster(local.url)
        await client.initialize()
        probe = build_redis_cluster(local.url)  # the test's view; the broker keeps its own
        await probe.initialize()
        heard = Heard()
        broker = ShardedBroker(client, heard.message, heard.gap)
        await broker.start()
        tasks = [asyncio.create_task(broker.run()), asyncio.create_task(broker.run_subscriptions())]
        try:
            channels = user_channels(60)
            await broker.subscribe(channels)
            # Not the node of the URL: the test's own client finds the cluster through it.
            victim = next(
                m for m in client.get_primaries() if not local.url.endswith(f":{m.port}/0")
            )
            on_victim = sorted(c for c in channels if master_of(client, c).name == victim.name)
            replica = next(r for r, m in local.replica_of.items() if m == int(victim.port))

            local.kill(int(victim.port))

            async def promoted() -> bool:
                await probe.nodes_manager.initialize()
                return master_of(probe, on_victim[0]).port == replica

            await eventually(promoted, seconds=30, what="the replica promoted")

            async def followed() -> bool:
                return set(on_victim) <= broker.nodes().get(f"127.0.0.1:{replica}", set())

            await eventually(followed, seconds=30, what="the channels on the promoted replica")
            assert heard.gaps == [on_victim]
            await publish_all(probe, channels, b"after the failover")
            await heard_once(heard, channels, b"after the failover")
        finally:
            await broker.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()
            await probe.aclose()
