from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from core.clients import build_redis, create_admin, ensure_topics
from core.migrate import migrate
from core.settings import Settings
from core.topics import Topics
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
