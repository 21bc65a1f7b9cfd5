"""Dependencies going away under a running server: nothing acknowledged is lost and reads
keep working. Kafka is the shared local stack's, so that test runs last (see conftest.py)
and always restores what it stopped; Redis is a Redis of the test's own, started by the
stack script with the same configuration (tests/support/private_redis.py): stopping it
costs no reload of the shared one's data and nobody else sees the gap."""

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from core.settings import Settings
from tests.support.api import Client, MakeClient, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.env import stack
from tests.support.private_redis import private_redis
from tests.support.topics import posts_on_topic

pytestmark = pytest.mark.slow


def stopped(service: str) -> Iterator[None]:
    result = stack("stop", service)
    assert result.returncode == 0, result.stderr
    try:
        yield
    finally:
        result = stack("start", service)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def kafka_down() -> Iterator[None]:
    yield from stopped("kafka")


@pytest.mark.outage
async def test_posts_accepted_while_kafka_is_down_all_reach_the_topic(
    settings: Settings, db: asyncpg.Pool, kafka_down: None, api: Client
) -> None:
    author = await sign_up(api)
    accepted = [int(await post(api, author, f"kafka is down {i}")) for i in range(50)]
    unsent = await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    assert unsent >= 50
    assert stack("start", "kafka").returncode == 0
    on_topic = [p for p in await posts_on_topic(settings, set(accepted), 90) if p in accepted]
    assert sorted(set(on_topic)) == accepted
    assert len(on_topic) == len(set(on_topic)), "published twice"
    assert on_topic == sorted(on_topic), "order per author not kept"
    for _ in range(200):
        if await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0:
            break
        await asyncio.sleep(0.05)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_feed_is_served_from_postgres_while_redis_is_down(
    settings: Settings, aiohttp_client: MakeClient, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis_server:
        api = await aiohttp_client(
            serve_api(dataclasses.replace(settings, redis_url=redis_server.url))
        )
        reader, author = await sign_up(api), await sign_up(api)
        await follow(api, reader, author)
        ids = [await post(api, author, f"before outage {i}") for i in range(5)]
        redis_server.stop()
        try:
            during = await post(api, author, "during outage")  # writes never needed Redis
            resp = await api.get("/v1/feed", params={"limit": "4"}, headers=reader.auth)
            assert resp.status == 200
            body = await resp.json()
            second = await api.get(
                "/v1/feed", params={"cursor": body["next_cursor"]}, headers=reader.auth
            )
            seen = [p["id"] for p in body["posts"] + (await second.json())["posts"]]
            assert seen == [during, *ids[::-1]]
            single = await api.get(f"/v1/posts/{during}", headers=reader.auth)
            assert single.status == 200 and (await single.json())["text"] == "during outage"
            ready = await api.get("/readyz")
            assert (await ready.json())["checks"]["redis"] != "ok"
        finally:
            redis_server.start()
        # Back to normal once Redis returns.
        resp = await api.get("/v1/feed", headers=reader.auth)
        assert resp.status == 200 and len((await resp.json())["posts"]) == 6
