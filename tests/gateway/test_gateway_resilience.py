"""The gateway under stress and when things break: a burst of disconnects, a killed
pub/sub link, Redis that cannot confirm a subscription, a task that dies (the supervisor
itself: tests/core/test_supervision.py); and what it reports (post-to-socket latency). Real
Redis, Postgres, API server and fan-out."""

import asyncio
import dataclasses
import logging
import time
import uuid

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import events, keys
from core.auth import TokenSigner
from core.ids import min_id_for_ms
from core.settings import Settings
from gateway.codes import Close
from gateway.endpoints import NODE
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.gateway_server import serve_gateway
from tests.support.in_process import in_process_system
from tests.support.live import SSEClient, ws_json
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def gateway_settings(settings: Settings, api: Client) -> Settings:
    return dataclasses.replace(
        settings,
        gateway_api_url=str(api.make_url("")).rstrip("/"),
        gateway_connects_per_ip=1_000_000,
    )


@pytest.fixture
async def gw(gateway_settings: Settings, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(serve_gateway(gateway_settings))


async def until_live(gw: Client, user_id: int, connections: int = 1) -> None:
    node = gw.app[NODE]
    async with asyncio.timeout(20):
        while node.hub.live_connections(user_id) < connections:
            await asyncio.sleep(0.02)


def roomy_session() -> aiohttp.ClientSession:
    """A client session that holds any number of WebSockets (the default: 100)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def test_2000_connections_dropping_at_once_clear_every_presence_key(
    gateway_settings: Settings,
    aiohttp_client: MakeClient,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A small pool: one command per disconnect would run it dry at once.
    settings = dataclasses.replace(gateway_settings, redis_max_connections=8)
    gw = await aiohttp_client(serve_gateway(settings))
    node = gw.app[NODE]
    signer = TokenSigner(settings.secret_key, 600)
    base = 9_100_000_000 + (uuid.uuid4().int % 1_000_000) * 10_000
    users = [base + i for i in range(2000)]
    url = str(gw.make_url("/v1/stream"))
    sessions = [roomy_session() for _ in range(4)]
    gate = asyncio.Semaphore(200)
    held: list[aiohttp.ClientWebSocketResponse] = []  # a dropped reference closes it

    async def open_one(session: aiohttp.ClientSession, user: int) -> None:
        async with gate:
            held.append(await session.ws_connect(url, params={"access_token": signer.issue(user)}))

    async def presence_keys() -> int:
        pipe = redis_client.pipeline(transaction=False)
        for user in users:
            pipe.exists(keys.presence(user))
        return sum(await pipe.execute())

    caplog.set_level(logging.WARNING)
    try:
        await asyncio.gather(
            *(open_one(sessions[i % len(sessions)], user) for i, user in enumerate(users))
        )
        async with asyncio.timeout(60):
            while node.hub.users < len(users):
                await asyncio.sleep(0.05)

        async def all_online() -> bool:
            return await presence_keys() == len(users)

        await eventually(all_online, seconds=30, what="2 000 users online")
        # Every connection drops at once (the clients' sockets close together), and the
        # first 50 users come straight back: they must stay online.
        await asyncio.gather(*(session.close() for session in sessions))
        back = roomy_session()
        sessions.append(back)
        await asyncio.gather(*(open_one(back, user) for user in users[:50]))

        async def only_returning_online() -> bool:
            if node.hub.users != 50:
                return False
            pipe = redis_client.pipeline(transaction=False)
            for user in users:
                pipe.exists(keys.presence(user))
            found: list[int] = await pipe.execute()
            return sum(found[:50]) == 50 and sum(found[50:]) == 0

        await eventually(only_returning_online, seconds=30, what="presence of the 1 950 cleared")
        await asyncio.sleep(0.3)  # nothing clears the returning users late
        assert await presence_keys() == 50
    finally:
        for session in sessions:
            await session.close()
    problems = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert not [p for p in problems if "Too many connections" in p or "presence" in p], problems


@pytest.fixture
async def stack(settings: Settings, aiohttp_client: MakeClient) -> tuple[Client, Client]:
    """API server, fan-out worker and gateway, in this process."""
    system = await in_process_system(settings, aiohttp_client)
    return system.api, system.gw


async def test_a_killed_pubsub_link_makes_clients_resume_and_miss_nothing(
    stack: tuple[Client, Client], redis_client: aioredis.Redis
) -> None:
    api, gw = stack
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    await api.get("/v1/feed", headers=reader.auth)
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token})
    sse = SSEClient(await gw.get("/v1/stream/sse", headers=reader.auth))
    await until_live(gw, int(reader.id), 2)
    first = await post(api, author, "seen live")
    assert (await ws_json(ws, 20))["id"] == first
    assert (await sse.next(20)).id == first

    # What Redis does to a subscriber past its output buffer limit, or a restart.
    killed = await redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    message = await ws.receive(timeout=20)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.RESUME
    event = await sse.next(20)
    assert event.event == "close" and event.json()["code"] == Close.RESUME
    sse.response.close()

    missed = [await post(api, author, f"missed {i}") for i in range(5)]

    async def fanned_out() -> bool:
        members = await redis_client.zrange(keys.timeline(int(reader.id)), 0, -1)
        return keys.timeline_member(int(missed[-1])) in members

    await eventually(fanned_out, what="the missed posts in the reader's timeline")
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token, "since": first})
    assert [(await ws_json(ws, 20))["id"] for _ in missed] == missed
    after = await post(api, author, "live again")
    assert (await ws_json(ws, 20))["id"] == after  # the new link delivers, no duplicate
    await ws.close()
    metrics = await (await gw.get("/metrics")).text()
    assert "gateway_pubsub_reconnects_total 1.0" in metrics


async def test_a_connect_waits_a_bounded_time_for_its_subscription(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    node = gw.app[NODE]
    warm, ws_user, sse_user = await sign_up(api), await sign_up(api), await sign_up(api)
    warm_ws = await gw.ws_connect("/v1/stream", params={"access_token": warm.token})
    await until_live(gw, int(warm.id))  # tier thresholds read and cached
    node.broker.subscribe_timeout = 0.5
    # Redis answers nobody for 3 s: the SUBSCRIBE of a new user is not confirmed.
    await redis_client.client_pause(3000, all=True)
    ws = await gw.ws_connect("/v1/stream", params={"access_token": ws_user.token})
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.TRY_AGAIN
    resp = await gw.get("/v1/stream/sse", headers=sse_user.auth)
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await resp.json())["error"]["code"] == "unavailable"
    assert node.hub.connections(int(ws_user.id)) == 0
    assert node.hub.connections(int(sse_user.id)) == 0

    await redis_client.client_unpause()
    node.broker.subscribe_timeout = 10
    ws = await gw.ws_connect("/v1/stream", params={"access_token": ws_user.token})
    await until_live(gw, int(ws_user.id))
    await redis_client.publish(keys.user_channel(int(ws_user.id)), events.live_post({"id": "7"}))
    assert (await ws_json(ws))["id"] == "7"
    for socket in (ws, warm_ws):
        await socket.close()


async def test_a_dead_task_is_logged_restarted_and_shown_in_readiness(
    gw: Client, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await gw.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["checks"]["pubsub"] == "ok"
    assert body["checks"]["task:pull-authors"] == body["checks"]["task:stats"] == "ok"
    authors = next(t for t in asyncio.all_tasks() if t.get_name() == "gateway.pull-authors")
    authors.cancel()
    async with asyncio.timeout(10):
        while not any("task pull-authors" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.02)
    resp = await gw.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["task:pull-authors"] == "down: cancelled"

    async def ready_again() -> bool:
        return (await gw.get("/readyz")).status == 200

    await eventually(ready_again, seconds=10, what="the pull-authors task restarted")
    assert any(t.get_name() == "gateway.pull-authors" and not t.done() for t in asyncio.all_tasks())
    metrics = await (await gw.get("/metrics")).text()
    assert 'feed_task_restarts_total{task="pull-authors"} 1.0' in metrics


async def test_post_to_socket_latency_is_reported_and_exported(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    node = gw.app[NODE]
    snapshot = node.snapshot()
    assert snapshot["latency_p50_ms"] is None and snapshot["latency_p99_ms"] is None
    user = await sign_up(api)
    ws = await gw.ws_connect("/v1/stream", params={"access_token": user.token})
    await until_live(gw, int(user.id))
    for sequence in range(3):
        # A post created just now; distinct ids even within one millisecond (a
        # connection never sends the same post twice).
        post_id = min_id_for_ms(int(time.time() * 1000)) + sequence
        await redis_client.publish(
            keys.user_channel(int(user.id)), events.live_post({"id": str(post_id)})
        )
        assert (await ws_json(ws))["id"] == str(post_id)
    snapshot = node.snapshot()
    p50, p99 = snapshot["latency_p50_ms"], snapshot["latency_p99_ms"]
    assert isinstance(p50, float) and isinstance(p99, float) and 0 <= p50 <= p99

    async def reported() -> bool:
        raw = await redis_client.get(keys.node_stats("gateway", node.name))
        return raw is not None and orjson.loads(raw).get("latency_p99_ms") is not None

    await eventually(reported, seconds=10, what="latency in the stats key")
    metrics = await (await gw.get("/metrics")).text()
    assert "gateway_post_to_socket_seconds_count 3.0" in metrics
    await ws.close()


async def test_readers_of_a_pull_tier_author_connecting_together_all_get_its_posts(
    api: Client, gw: Client, db: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    author = await sign_up(api)
    readers: list[User] = [await sign_up(api) for _ in range(6)]
    for reader in readers:
        await follow(api, reader, author)
    await db.execute("UPDATE users SET fanout_tier = 'pull' WHERE id = $1", int(author.id))
    sockets = await asyncio.gather(
        *(gw.ws_connect("/v1/stream", params={"access_token": r.token}) for r in readers)
    )
    for reader in readers:
        await until_live(gw, int(reader.id))
    await redis_client.publish(
        keys.author_channel(int(author.id)), events.live_post({"id": "99", "text": "to all"})
    )
    for ws in sockets:
        assert (await ws_json(ws))["id"] == "99"
        await ws.close()
