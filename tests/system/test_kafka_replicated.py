"""A replicated Kafka (issue 24): three KRaft brokers (scripts/kafka_cluster.py), topics
with replication factor 3 and min.insync.replicas 2, the outbox relay producing with
acks=all and idempotence. One broker SIGKILLed under a stream of posts: every
acknowledged post still reaches Kafka and the follower's timeline, and nothing stops."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from core import keys
from core.clients import create_admin, ensure_topics
from core.settings import Settings
from core.topics import Topics
from fanout.app import CONSUMER
from fanout.app import create_app as create_fanout
from scripts.kafka_cluster import LocalKafkaCluster, kafka_cluster
from tests.support.api import MakeClient, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.topics import posts_on_topic
from tests.support.wait import eventually

# Three JVMs start in the fixture (~30 s on two busy cores); failover takes Kafka's broker
# session timeout (9 s) plus a client metadata refresh (core/clients.kafka_common).
# Part of the clustered-topology suite (`make test-cluster`): three KRaft brokers.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    workdir: Path = tmp_path_factory.mktemp("kafka3")
    with kafka_cluster(workdir, brokers=3) as cluster:
        yield cluster


async def test_a_killed_broker_loses_no_acknowledged_post(
    brokers: LocalKafkaCluster,
    settings: Settings,
    aiohttp_client: MakeClient,
    redis_client: aioredis.Redis,
) -> None:
    replicated = dataclasses.replace(
        settings,
        kafka_bootstrap=brokers.bootstrap,
        kafka_topic_prefix=f"r{uuid.uuid4().hex[:8]}-",
        kafka_replication_factor=3,
        kafka_min_insync_replicas=2,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="earliest",
    )
    topics = Topics.for_settings(replicated)
    admin = await create_admin(replicated)
    try:
        await ensure_topics(admin, topics.all(), replicated.kafka_partitions, 3, 2)

        async def placed() -> bool:  # partitions show up once the controller placed them
            (described,) = await admin.describe_topics([topics.posts])
            partitions = described["partitions"]
            assert {len(p["replicas"]) for p in partitions} <= {3}
            return len(partitions) == replicated.kafka_partitions

        await eventually(placed, what="the posts topic's partitions, three replicas each")

        async def min_insync() -> str | None:
            # The broker asked may not know the new topic yet (KRaft metadata reaches
            # each broker in its own time): no entries from it then, ask again.
            (config,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.posts)]
            )
            entries = {name: value for name, value, *_ in config.resources[0][4]}
            return entries.get("min.insync.replicas")

        async def configured() -> bool:
            return await min_insync() == "2"

        await eventually(configured, what="min.insync.replicas=2 on the posts topic")
    finally:
        await admin.close()

    api = await aiohttp_client(serve_api(replicated))
    worker = await aiohttp_client(create_fanout(replicated))
    await asyncio.wait_for(worker.app[CONSUMER].assigned.wait(), 60)
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    await api.get("/v1/feed", headers=reader.auth)  # the timeline exists: fan-out fills it

    before = [await post(api, author, f"before {i}") for i in range(10)]
    brokers.kill(1)  # a leader of some partitions and one of the three controllers
    after = [await post(api, author, f"after {i}") for i in range(10)]  # each a 201
    acknowledged = {int(p) for p in before + after}

    on_topic = await posts_on_topic(replicated, acknowledged, 90)
    assert acknowledged <= set(on_topic)

    async def all_delivered() -> bool:
        members = await redis_client.zrange(keys.timeline(int(reader.id)), 0, -1)
        return {keys.timeline_member(p) for p in acknowledged} <= set(members)

    await eventually(all_delivered, seconds=90, what="every post in the reader's timeline")
    feed = await (await api.get("/v1/feed?limit=50", headers=reader.auth)).json()
    ids = [int(p["id"]) for p in feed["posts"]]
    assert sorted(ids) == sorted(acknowledged), "a post missing or shown twice"
