"""Failover on a real Redis Cluster of 3 masters and 3 replicas (issue 24, item 3): a
master is killed (SIGKILL, as a crashed machine) while posts flow. Its replica is
promoted; the API server, the fan-out worker and the gateway recover without a restart;
the feed answers throughout (from Postgres while the slot has no master); the live
clients of that shard are told to resume and, having resumed, have missed nothing and seen
nothing twice; every post is in every follower's timeline exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.cluster import RedisCluster

from core import events, keys
from core.settings import Settings
from fanout.writer import TimelineWriter
from gateway.codes import Close
from scripts.redis_cluster import LocalCluster, redis_cluster
from tests.support.api import Client, MakeClient, User, post, sign_up
from tests.support.cluster_live import (
    following,
    master_of,
    on_other_masters,
    posting,
    readers_on_every_master,
)
from tests.support.in_process import InProcess, in_process_system
from tests.support.wait import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# A master silent this long is failed over. Short, so that the test takes seconds; the
# replicas are told to take over however long they were cut off (scripts/redis_cluster.py).
NODE_TIMEOUT_MS = 2_000


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Its own cluster: the test kills one of its masters."""
    with redis_cluster(
        Path(tmp_path_factory.mktemp("failover")),
        masters=3,
        replicas=1,
        node_timeout_ms=NODE_TIMEOUT_MS,
    ) as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(settings: Settings, replicated: LocalCluster) -> Settings:
    """This module's services (and the `cluster` client) on the replicated cluster."""
    return dataclasses.replace(settings, redis_url=replicated.url, redis_cluster=True)


@pytest.fixture
async def system(cluster_settings: Settings, aiohttp_client: MakeClient) -> InProcess:
    return await in_process_system(cluster_settings, aiohttp_client)


async def feed_ids(api: Client, user: User) -> list[str]:
    resp = await api.get("/v1/feed", params={"limit": "100"}, headers=user.auth)
    assert resp.status == 200, await resp.text()
    return [p["id"] for p in (await resp.json())["posts"]]


async def test_a_batch_waits_for_a_replica_of_each_node_it_wrote_to(
    cluster: RedisCluster, replicated: LocalCluster
) -> None:
    """WAIT 1 follows each node's part of a fan-out batch: with every replica up the
    batch returns acknowledged; with one replica frozen, its master's part is counted
    unreplicated after the wait (and the batch goes on: availability first)."""
    registry = CollectorRegistry()
    late = Counter("late_batches", "batches no replica acknowledged", registry=registry)
    writer = TimelineWriter(cluster, cap=800, replica_wait_ms=300, unreplicated=late)
    followers = list(range(70_000, 70_300))
    for user in followers:
        await cluster.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
    payload = events.live_post({"id": "1"})
    await writer.add(1, payload, followers)
    assert registry.get_sample_value("late_batches_total") == 0

    holders = next(h for h in cluster.nodes_manager.slots_cache.values() if len(h) > 1)
    frozen = replicated.processes[int(holders[1].port)]
    frozen.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = await writer.add(2, payload, followers)
        assert time.monotonic() - started >= 0.3  # it waited for the frozen replica
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert result.written == len(followers)
    assert registry.get_sample_value("late_batches_total") == 1


async def test_a_killed_master_is_replaced_and_nothing_is_lost_or_repeated(
    system: InProcess, cluster: RedisCluster, replicated: LocalCluster
) -> None:
    api, gw = system.api, system.gw
    author = await sign_up(api)
    readers = await readers_on_every_master(api, cluster, author)
    url_port = int(replicated.url.rsplit(":", 1)[1].split("/")[0])
    # The victim: a master that is not the one REDIS_URL names (the node every client
    # starts from; in production that is a list or a DNS name, here a single port).
    victim_user = next(
        r for r in readers if master_of(cluster, keys.user_channel(int(r.id))).port != url_port
    )
    victim = master_of(cluster, keys.user_channel(int(victim_user.id)))
    replica = next(p for p, m in replicated.replica_of.items() if m == int(victim.port))
    others = on_other_masters(cluster, readers, victim)
    count = 12
    async with following(gw, (victim_user, *others), count) as live:
        first = await post(api, author, "before the failover")
        await live.all_saw([first])
        replicated.kill(int(victim.port))
        flow = asyncio.create_task(posting(api, author, count - 1, 0.4))
        try:
            # The feed answers while the slot has no master (Postgres), and after.
            while not flow.done():
                assert first in await feed_ids(api, victim_user)
                await asyncio.sleep(0.2)
            made = [first, *(await flow)]
            await live.done(90)
        finally:
            flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(flow, return_exceptions=True)
    views = live.views

    # The replica took the slots over.
    await cluster.nodes_manager.initialize()
    assert master_of(cluster, keys.user_channel(int(victim_user.id))).port == replica
    # The shard's client resumed once or more and has every post once, in order; the
    # others never noticed.
    assert views[victim_user.id].seen == made
    assert views[victim_user.id].closes and set(views[victim_user.id].closes) <= {
        Close.RESUME,
        Close.TRY_AGAIN,
    }
    for other in others:
        assert views[other.id].seen == made and views[other.id].closes == [], other.id
    # Every timeline holds every post once: fan-out in flight through the failover
    # completed exactly once.
    for reader in readers:

        async def complete(reader: User = reader) -> bool:
            ids = await feed_ids(api, reader)
            return sorted(ids) == sorted(made)

        await eventually(complete, 30, f"every post in {reader.id}'s feed")
        ids = await feed_ids(api, reader)
        assert len(ids) == len(set(ids))
