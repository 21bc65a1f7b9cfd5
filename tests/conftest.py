from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.clients import build_redis, build_redis_cluster, create_admin, ensure_topics
from core.migrate import migrate
from core.settings import Settings
from core.topics import Topics
from scripts.redis_cluster import LocalCluster, redis_cluster
from tests.support.api import Client, MakeClient
from tests.support.env import base_settings, isolated_settings, new_run_id


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop and restart shared servers run last, so nothing else sees the gap."""
    items.sort(key=lambda item: item.get_closest_marker("outage") is not None)


@pytest.fixture(scope="session")
def run_id() -> str:
    return new_run_id()


@pytest.fixture(scope="session")
def settings(run_id: str) -> Iterator[Settings]:
    """Settings for this test run: its own database (migrated), Redis db and topics."""
    import asyncio

    base = base_settings()
    test = isolated_settings(base, run_id)
    database = test.database_url.rsplit("/", 1)[1]

    async def create() -> None:
        admin = await asyncpg.connect(base.database_url)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(test.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        client = build_redis(test)
        try:
            await client.flushdb()
        finally:
            await client.aclose()
        kafka = await create_admin(test)
        try:
            await ensure_topics(kafka, Topics.for_settings(test).all(), test.kafka_partitions)
        finally:
            await kafka.close()

    async def drop() -> None:
        admin = await asyncpg.connect(base.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
        kafka = await create_admin(test)
        try:
            await kafka.delete_topics(list(Topics.for_settings(test).all()))
        finally:
            await kafka.close()

    asyncio.run(create())
    yield test
    asyncio.run(drop())


@pytest.fixture
async def api(settings: Settings, aiohttp_client: MakeClient) -> Client:
    """The real API server app on the test stack, with an HTTP client for it."""
    from tests.support.api_server import serve_api

    return await aiohttp_client(serve_api(settings))


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=5)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = build_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real Redis Cluster of 3 masters for this test run, started on first use. Keys are
    not isolated per test as a db is: tests on it use the ids their own seeding made."""
    with redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(settings: Settings, local_cluster: LocalCluster) -> Settings:
    """This run's settings with every service on the Redis Cluster (REDIS_CLUSTER=true)."""
    return dataclasses.replace(settings, redis_url=local_cluster.url, redis_cluster=True)


@pytest.fixture
async def cluster(cluster_settings: Settings) -> AsyncIterator[RedisCluster]:
    """A client of the cluster the test's services use (cluster_settings), slot map
    loaded."""
    client = build_redis_cluster(cluster_settings.redis_url)
    await client.initialize()
    yield client
    await client.aclose()
