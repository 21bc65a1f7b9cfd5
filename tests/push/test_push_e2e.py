"""Push notifications end to end through the real stack: posts and likes through the API,
fan-out and the push worker on real Kafka, Redis and Postgres, delivered to stand-ins that
speak APNs (HTTP/2, TLS, provider JWT) and Web Push (VAPID, aes128gcm) and check it all."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from core import keys
from core.events import PushJob
from core.settings import Settings
from gateway.app import create_app as create_gateway
from gateway.endpoints import NODE
from push.dispatcher import Dispatcher
from push.metrics import PushMetrics
from standins.apns import ApnsAnswer, ApnsStandin
from standins.tls import LocalCA
from standins.webpush import WebPushAnswer, WebPushStandin
from tests.support import standins
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.live import ws_json

Client = TestClient[web.Request, web.Application]

standin_ca = standins.standin_ca
apns_standin = standins.apns_standin
webpush_standin = standins.webpush_standin

QUIET = 1.5  # seconds to wait for a push that must NOT come (after one that must)


@dataclasses.dataclass
class Stack:
    api: Client
    settings: Settings
    apns: ApnsStandin
    webpush: WebPushStandin

    async def phone_and_browser(self, user: User) -> tuple[str, str]:
        """An APNs token and a Web Push subscription for `user`; (token, endpoint)."""
        token = os.urandom(32).hex()
        resp = await self.api.post(
            "/v1/devices", json={"kind": "apns", "token": token}, headers=user.auth
        )
        assert resp.status == 201, await resp.text()
        key = (await (await self.api.get("/v1/push/vapid-public-key")).json())["public_key"]
        sub = self.webpush.create_subscription(application_server_key=key)
        resp = await self.api.post(
            "/v1/devices", json={"kind": "webpush", "subscription": sub}, headers=user.auth
        )
        assert resp.status == 201, await resp.text()
        return token, sub["endpoint"]

    async def like(self, user: User, post_id: str) -> None:
        resp = await self.api.post(f"/v1/posts/{post_id}/like", headers=user.auth)
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def stack(
    settings: Settings,
    aiohttp_client: MakeClient,
    standin_ca: LocalCA,
    apns_standin: ApnsStandin,
    webpush_standin: WebPushStandin,
) -> Stack:
    pointed = standins.push_settings(standin_ca, apns_standin)
    api, live = await standins.push_pipeline(settings, pointed, ("apns", "webpush"), aiohttp_client)
    return Stack(api, live, apns_standin, webpush_standin)


def by_token(standin: ApnsStandin, token: str) -> list[Any]:
    return [r for r in standin.received.items if r.token == token]


def by_endpoint(standin: WebPushStandin, endpoint: str) -> list[Any]:
    return [r for r in standin.received.items if r.endpoint == endpoint]


async def test_offline_user_gets_one_coalesced_feed_push_and_one_alert_per_device(
    stack: Stack,
) -> None:
    reader, author, fan = [await sign_up(stack.api) for _ in range(3)]
    token, endpoint = await stack.phone_and_browser(reader)
    await follow(stack.api, reader, author)
    own = await post(stack.api, reader, "my post")
    for i in range(3):  # three posts in one window: one feed push per device
        await post(stack.api, author, f"news {i}")
    await stack.like(fan, own)

    await stack.apns.received.wait_for(2, timeout=30)
    await stack.webpush.received.wait_for(2, timeout=30)
    await asyncio.sleep(QUIET)
    phone = {r.payload["kind"]: r for r in by_token(stack.apns, token)}
    browser = {json.loads(r.plaintext)["kind"]: r for r in by_endpoint(stack.webpush, endpoint)}
    assert len(by_token(stack.apns, token)) == 2 and set(phone) == {"feed", "alert"}
    assert len(by_endpoint(stack.webpush, endpoint)) == 2 and set(browser) == {"feed", "alert"}

    feed = phone["feed"]
    assert feed.headers["apns-push-type"] == "background"
    assert feed.headers["apns-priority"] == "5"
    assert feed.headers["apns-collapse-id"] == "feed"
    assert feed.payload["aps"] == {"content-available": 1}
    assert feed.claims["iss"] == stack.apns.team_id
    alert = phone["alert"]
    assert alert.headers["apns-push-type"] == "alert"
    assert alert.headers["apns-priority"] == "10"
    assert fan.handle in alert.payload["aps"]["alert"]["body"]
    assert alert.payload["post_id"] == own

    web_feed, web_alert = browser["feed"], browser["alert"]
    assert web_feed.topic == "feed" and web_feed.urgency == "low"
    assert 0 < web_feed.ttl <= stack.settings.push_feed_ttl_seconds
    assert web_feed.claims["sub"] == stack.settings.vapid_subject
    body = json.loads(web_alert.plaintext)
    assert fan.handle in body["body"] and body["post_id"] == own
    assert web_alert.urgency == "high" and web_alert.topic is None


async def test_an_online_user_gets_no_push(
    stack: Stack, aiohttp_client: MakeClient, redis_client: aioredis.Redis
) -> None:
    online, offline, author = [await sign_up(stack.api) for _ in range(3)]
    online_token, online_endpoint = await stack.phone_and_browser(online)
    offline_token, _ = await stack.phone_and_browser(offline)
    for user in (online, offline):
        await follow(stack.api, user, author)
    gw_settings = dataclasses.replace(
        stack.settings, gateway_api_url=str(stack.api.make_url("")).rstrip("/")
    )
    gw = await aiohttp_client(create_gateway(gw_settings))
    ws = await gw.ws_connect("/v1/stream", params={"access_token": online.token})
    async with asyncio.timeout(10):
        while not await redis_client.exists(keys.presence(int(online.id))):
            await asyncio.sleep(0.05)
    assert gw.app[NODE].hub.connections(int(online.id)) == 1

    posted = await post(stack.api, author, "hello both")
    assert (await ws_json(ws, 20))["id"] == posted  # the online user has it live
    await stack.apns.received.wait_for(1, timeout=30)  # the offline one got a push
    await asyncio.sleep(QUIET)
    assert [r.token for r in stack.apns.received.items] == [offline_token]
    assert by_token(stack.apns, online_token) == []
    assert by_endpoint(stack.webpush, online_endpoint) == []
    await ws.close()


async def test_a_user_back_online_gets_no_stale_push(
    db: asyncpg.Pool, redis_client: aioredis.Redis, stack: Stack
) -> None:
    """The worker checks presence itself: a job queued while the user was offline is
    dropped once they are back (the live stream already has what it is about)."""
    user = await sign_up(stack.api)
    await stack.phone_and_browser(user)
    await redis_client.sadd(keys.presence(int(user.id)), "some-gateway-node")
    metrics = PushMetrics.create(CollectorRegistry())
    dispatcher = Dispatcher(stack.settings, db, redis_client, {}, metrics)
    job = PushJob(
        kind="alert", user_id=int(user.id), created_at_ms=int(time.time() * 1000), text="hi"
    )
    assert await dispatcher.handle(job) == "online"
    await redis_client.delete(keys.presence(int(user.id)))
    stale = PushJob(kind="alert", user_id=int(user.id), created_at_ms=1_000, text="old")
    assert await dispatcher.handle(stale) == "expired"


async def test_gone_devices_are_disabled_and_never_pushed_again(stack: Stack) -> None:
    user = await sign_up(stack.api)
    token, endpoint = await stack.phone_and_browser(user)
    stack.apns.script(token, ApnsAnswer(410, "Unregistered"))
    stack.webpush.script(endpoint, WebPushAnswer(410))
    own = await post(stack.api, user, "like me")
    await stack.like(await sign_up(stack.api), own)
    await stack.apns.received.wait_for(1, timeout=30)
    await stack.webpush.received.wait_for(1, timeout=30)

    async def disabled() -> dict[str, str | None]:
        listed = await (await stack.api.get("/v1/devices", headers=user.auth)).json()
        return {d["kind"]: d["disabled_reason"] for d in listed["devices"] if not d["enabled"]}

    async with asyncio.timeout(10):
        while len(await disabled()) < 2:
            await asyncio.sleep(0.1)
    assert await disabled() == {"apns": "apns:Unregistered", "webpush": "webpush:http_410"}

    # A later alert for the same user reaches neither device.
    other = await sign_up(stack.api)
    await stack.like(other, own)
    await asyncio.sleep(QUIET * 2)
    assert len(by_token(stack.apns, token)) == 1
    assert len(by_endpoint(stack.webpush, endpoint)) == 1


async def test_too_many_requests_is_retried_then_delivered(stack: Stack) -> None:
    user = await sign_up(stack.api)
    token, endpoint = await stack.phone_and_browser(user)
    stack.apns.script(token, ApnsAnswer(429, "TooManyRequests"))
    stack.webpush.script(endpoint, WebPushAnswer(429, retry_after=1), WebPushAnswer(500))
    own = await post(stack.api, user, "like me")
    await stack.like(await sign_up(stack.api), own)
    await stack.apns.received.wait_for(2, timeout=30)
    await stack.webpush.received.wait_for(3, timeout=30)
    assert [r.status for r in by_token(stack.apns, token)] == [429, 200]
    web = by_endpoint(stack.webpush, endpoint)
    assert [r.status for r in web] == [429, 500, 201]
    assert web[1].received_at - web[0].received_at >= 1.0  # Retry-After honoured
    assert len({r.plaintext for r in web}) == 1  # the same message each time
