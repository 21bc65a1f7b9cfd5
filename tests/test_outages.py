"""Dependencies going away under a running server: nothing acknowledged is lost and reads
keep working. These stop and restart the shared local stack's servers, so they run last
(see conftest.py) and always restore what they stopped."""

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.settings import Settings
from tests.support.api import follow, post, sign_up
from tests.support.env import stack
from tests.support.topics import posts_on_topic

pytestmark = [pytest.mark.outage, pytest.mark.slow]
Client = TestClient[web.Request, web.Application]


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
    for _ in range(20):
        if await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0:
            break
        await asyncio.sleep(0.5)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_feed_is_served_from_postgres_while_redis_is_down(
    settings: Settings, api: Client
) -> None:
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    ids = [await post(api, author, f"before outage {i}") for i in range(5)]
    result = stack("stop", "redis")
    assert result.returncode == 0, result.stderr
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
        assert stack("start", "redis").returncode == 0
    # Back to normal once Redis returns.
    resp = await api.get("/v1/feed", headers=reader.auth)
    assert resp.status == 200 and len((await resp.json())["posts"]) == 6
