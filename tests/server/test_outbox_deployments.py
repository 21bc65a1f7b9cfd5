"""Deployments that share a database but not a topic prefix (KAFKA_TOPIC_PREFIX) each
relay their own events. With one relay lock for the whole database, whichever server won
it published every deployment's events to its own topics, and the other deployment's
consumers never saw theirs. Real Postgres and Kafka."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.clients import create_admin, ensure_topics
from core.settings import Settings
from core.topics import Topics
from server.outbox import relay_lock
from tests.support.api import post, sign_up
from tests.support.api_server import serve_api
from tests.support.topics import posts_on_topic

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def other_deployment(settings: Settings) -> AsyncIterator[Settings]:
    """The same database and Kafka, with a prefix (and topics) of its own."""
    other = dataclasses.replace(settings, kafka_topic_prefix=f"{settings.kafka_topic_prefix}b-")
    topics = list(Topics.for_settings(other).all())
    admin = await create_admin(other)
    try:
        await ensure_topics(admin, topics, other.kafka_partitions)
        yield other
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def test_each_deployment_relays_its_own_events_to_its_own_topics(
    settings: Settings,
    other_deployment: Settings,
    db: asyncpg.Pool,
    aiohttp_client: Callable[[TestServer], Awaitable[Client]],
) -> None:
    ours = await aiohttp_client(serve_api(settings))
    theirs = await aiohttp_client(serve_api(other_deployment))
    # Theirs first: one relay for both would publish in id order, theirs before ours.
    their_posts = {int(await post(theirs, await sign_up(theirs), f"b {i}")) for i in range(3)}
    our_posts = {int(await post(ours, await sign_up(ours), f"a {i}")) for i in range(3)}
    on_ours = await posts_on_topic(settings, our_posts, 60)
    on_theirs = await posts_on_topic(other_deployment, their_posts, 60)
    assert not their_posts & set(on_ours)
    assert not our_posts & set(on_theirs)
    for _ in range(40):  # each relay marks its own rows sent
        if not await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
            break
        await asyncio.sleep(0.25)
    rows = await db.fetch(
        "SELECT topic_prefix, count(*) AS n FROM outbox WHERE sent_at IS NULL GROUP BY 1"
    )
    assert rows == []


def test_relay_locks_differ_by_prefix_and_fit_postgres_int4_keys() -> None:
    locks = {relay_lock(prefix) for prefix in ("", "a-", "b-", "test-1-", "é-")}
    assert len(locks) == 5
    assert all(-(2**31) <= key < 2**31 for lock in locks for key in lock)
