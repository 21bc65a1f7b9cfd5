"""Android pushes end to end through the real stack: posts and likes through the API,
fan-out and the push worker on real Kafka, Redis and Postgres, delivered to a stand-in
that speaks FCM HTTP v1 and Google's OAuth 2.0 token grant and checks both."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import keys
from core.settings import Settings
from gateway.app import create_app as create_gateway
from standins.fcm import FcmAnswer, FcmReceived, FcmStandin, registration_token
from standins.tls import LocalCA
from tests.support import standins
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.live import ws_json

Client = TestClient[web.Request, web.Application]

standin_ca = standins.standin_ca
fcm_standin = standins.fcm_standin

QUIET = 1.5  # seconds to wait for a push that must NOT come (after one that must)
WAIT = 30.0  # a bound on eventual delivery, never a measure of speed


@dataclasses.dataclass
class Stack:
    api: Client
    settings: Settings
    fcm: FcmStandin

    async def android_phone(self, user: User) -> str:
        """A registration token, registered for `user` as the app would."""
        token = registration_token()
        resp = await self.api.post(
            "/v1/devices", json={"kind": "fcm", "token": token}, headers=user.auth
        )
        assert resp.status == 201, await resp.text()
        return token

    async def like(self, user: User, post_id: str) -> None:
        resp = await self.api.post(f"/v1/posts/{post_id}/like", headers=user.auth)
        assert resp.status == 200, await resp.text()

    def to(self, token: str) -> list[FcmReceived]:
        return [r for r in self.fcm.received.items if r.token == token]

    async def wait_for(self, token: str, count: int) -> list[FcmReceived]:
        deadline = time.monotonic() + WAIT
        while len(self.to(token)) < count:
            assert time.monotonic() < deadline, f"{len(self.to(token))} of {count} pushes"
            await asyncio.sleep(0.05)
        return self.to(token)


@pytest.fixture
async def stack(
    settings: Settings,
    aiohttp_client: MakeClient,
    standin_ca: LocalCA,
    fcm_standin: FcmStandin,
) -> Stack:
    pointed = standins.push_settings(standin_ca, fcm=fcm_standin)
    api, live = await standins.push_pipeline(settings, pointed, ("fcm",), aiohttp_client)
    return Stack(api, live, fcm_standin)


async def test_offline_android_user_gets_one_coalesced_feed_push_and_one_alert(
    stack: Stack,
) -> None:
    reader, author, fan = [await sign_up(stack.api) for _ in range(3)]
    phone = await stack.android_phone(reader)
    await follow(stack.api, reader, author)
    own = await post(stack.api, reader, "my post")
    for i in range(3):  # three posts in one window: one feed push
        await post(stack.api, author, f"news {i}")
    await stack.like(fan, own)

    await stack.wait_for(phone, 2)
    await asyncio.sleep(QUIET)
    got = {r.message["data"]["kind"]: r for r in stack.to(phone)}
    assert len(stack.to(phone)) == 2 and set(got) == {"feed", "alert"}

    feed = got["feed"].message
    assert "notification" not in feed  # a data message: the app fetches, shows nothing
    assert feed["android"]["collapse_key"] == "feed"
    assert feed["android"]["priority"] == "NORMAL"
    ttl = int(feed["android"]["ttl"].removesuffix("s"))
    assert 0 < ttl <= stack.settings.push_feed_ttl_seconds
    alert = got["alert"].message
    assert alert["android"]["priority"] == "HIGH" and "collapse_key" not in alert["android"]
    assert fan.handle in alert["notification"]["body"]
    assert alert["data"]["post_id"] == own and alert["data"]["link"] == f"feed://posts/{own}"
    assert len(stack.fcm.grants) == 1  # one access token for both

    # The ops dashboard's numbers show the provider's outcomes.
    operator = {"Authorization": f"Bearer {stack.settings.operator_token}"}
    deadline = time.monotonic() + WAIT
    while True:
        body: dict[str, Any] = await (await stack.api.get("/v1/ops/stats", headers=operator)).json()
        if body["totals"]["push"]["by_provider"].get("fcm", {}).get("sent", 0) >= 2:
            break
        assert time.monotonic() < deadline, body["totals"]["push"]
        await asyncio.sleep(0.25)
    assert body["totals"]["push"]["outcomes"]["fcm:sent:ok"] >= 2


async def test_an_online_android_user_gets_no_push(
    stack: Stack, aiohttp_client: MakeClient, redis_client: aioredis.Redis
) -> None:
    online, offline, author = [await sign_up(stack.api) for _ in range(3)]
    online_phone = await stack.android_phone(online)
    offline_phone = await stack.android_phone(offline)
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

    posted = await post(stack.api, author, "hello both")
    assert (await ws_json(ws, 20))["id"] == posted  # the online user has it live
    await stack.wait_for(offline_phone, 1)
    await asyncio.sleep(QUIET)
    assert stack.to(online_phone) == []
    await ws.close()


async def test_an_unregistered_android_device_is_disabled_and_never_pushed_again(
    stack: Stack,
) -> None:
    user = await sign_up(stack.api)
    phone = await stack.android_phone(user)
    stack.fcm.script(phone, FcmAnswer("UNREGISTERED"))
    own = await post(stack.api, user, "like me")
    await stack.like(await sign_up(stack.api), own)
    await stack.wait_for(phone, 1)

    async def disabled() -> list[str | None]:
        listed = await (await stack.api.get("/v1/devices", headers=user.auth)).json()
        return [d["disabled_reason"] for d in listed["devices"] if not d["enabled"]]

    deadline = time.monotonic() + WAIT
    while not await disabled():
        assert time.monotonic() < deadline, "the device was never disabled"
        await asyncio.sleep(0.1)
    assert await disabled() == ["fcm:UNREGISTERED"]

    await stack.like(await sign_up(stack.api), own)  # a later alert reaches nothing
    await asyncio.sleep(QUIET * 2)
    assert len(stack.to(phone)) == 1


async def test_quota_exceeded_and_unavailable_are_retried_then_delivered(stack: Stack) -> None:
    user = await sign_up(stack.api)
    phone = await stack.android_phone(user)
    stack.fcm.script(phone, FcmAnswer("QUOTA_EXCEEDED", retry_after=1), FcmAnswer("UNAVAILABLE"))
    own = await post(stack.api, user, "like me")
    await stack.like(await sign_up(stack.api), own)
    tries = await stack.wait_for(phone, 3)
    assert [r.status for r in tries] == [429, 503, 200]
    assert tries[1].received_at - tries[0].received_at >= 1.0  # Retry-After honoured
    # The same message each time, only its TTL counting down to the job's deadline.
    assert len({str((r.message["data"], r.message["notification"])) for r in tries}) == 1
    ttls = [int(r.message["android"]["ttl"].removesuffix("s")) for r in tries]
    assert ttls == sorted(ttls, reverse=True)
