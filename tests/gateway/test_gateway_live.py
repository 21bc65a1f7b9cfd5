"""The gateway end to end: posts through the API and fan-out reaching live clients,
resume after a disconnect, several gateway processes, graceful shutdown."""

import asyncio
import dataclasses
import signal

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import events, keys
from core.settings import Settings
from gateway.codes import Close
from gateway.endpoints import NODE
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.env import free_port
from tests.support.gateway_server import serve_gateway
from tests.support.in_process import in_process_system
from tests.support.live import SSEClient, ws_json
from tests.support.procs import start_service, wait_ready
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def stack(settings: Settings, aiohttp_client: MakeClient) -> tuple[Client, Client, Client]:
    system = await in_process_system(settings, aiohttp_client)
    return system.api, system.worker, system.gw


async def live_on(gw: Client, user: User, count: int = 1) -> None:
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.live_connections(int(user.id)) < count:
            await asyncio.sleep(0.02)


async def test_resume_after_a_disconnect_replays_20_posts_in_order_once_then_goes_live(
    stack: tuple[Client, Client, Client], redis_client: aioredis.Redis
) -> None:
    api, _, gw = stack
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    await api.get("/v1/feed", headers=reader.auth)
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token})
    await live_on(gw, reader)
    first = await post(api, author, "seen live")
    assert (await ws_json(ws, 20))["id"] == first
    await ws.close()

    missed = [await post(api, author, f"missed {i}") for i in range(20)]

    async def fanned_out() -> bool:
        members = await redis_client.zrange(keys.timeline(int(reader.id)), 0, -1)
        return keys.timeline_member(int(missed[-1])) in members

    await eventually(fanned_out, what="the 20 posts in the reader's timeline")
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token, "since": first})
    replayed = [(await ws_json(ws, 20))["id"] for _ in range(20)]
    assert replayed == missed
    after = await post(api, author, "live again")
    event = await ws_json(ws, 20)
    assert event["type"] == "post" and event["id"] == after  # next is new: no duplicate
    await ws.close()

    # SSE resumes the same way from Last-Event-ID.
    resp = await gw.get("/v1/stream/sse", headers={**reader.auth, "Last-Event-ID": missed[9]})
    sse = SSEClient(resp)
    ids = [(await sse.next(20)).id for _ in range(11)]
    assert ids == [*missed[10:], after]
    resp.close()


async def test_a_client_too_far_behind_is_told_to_reset(
    stack: tuple[Client, Client, Client], redis_client: aioredis.Redis
) -> None:
    api, _, gw = stack
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    await api.get("/v1/feed", headers=reader.auth)
    since = await post(api, author, "old")
    flood = [await post(api, author, f"flood {i}") for i in range(201)]  # > one replay

    async def fanned_out() -> bool:
        members = await redis_client.zrange(keys.timeline(int(reader.id)), 0, -1)
        return keys.timeline_member(int(flood[-1])) in members

    await eventually(fanned_out, what="the flood in the reader's timeline")
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token, "since": since})
    assert await ws_json(ws, 20) == {"type": "reset"}
    await ws.close()


async def test_a_resume_while_the_api_server_is_away_is_told_to_retry_then_resumes(
    settings: Settings, aiohttp_client: MakeClient
) -> None:
    """A gateway up before the API server (or while it restarts) cannot know what a
    client missed: 1013, come back, not `reset`, which would throw away a good feed."""
    api = await aiohttp_client(serve_api(settings))
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    since = await post(api, author, "seen")
    missed = [await post(api, author, f"missed {i}") for i in range(3)]
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = await aiohttp_client(serve_gateway(dataclasses.replace(settings, gateway_api_url=away)))
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token, "since": since})
    message = await ws.receive(timeout=20)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.TRY_AGAIN
    resp = await gw.get("/v1/stream/sse", headers={**reader.auth, "Last-Event-ID": since})
    event = await SSEClient(resp).next(20)
    assert event.event == "close" and event.json()["code"] == Close.TRY_AGAIN
    resp.close()

    # The API server is back: the same since resumes with what was missed.
    back = dataclasses.replace(settings, gateway_api_url=str(api.make_url("")).rstrip("/"))
    gw = await aiohttp_client(serve_gateway(back))
    ws = await gw.ws_connect("/v1/stream", params={"access_token": reader.token, "since": since})
    assert [(await ws_json(ws, 20))["id"] for _ in missed] == missed
    await ws.close()


async def test_two_gateway_processes_one_killed_the_other_keeps_serving(
    settings: Settings, redis_client: aioredis.Redis, aiohttp_client: MakeClient
) -> None:
    api = await aiohttp_client(serve_api(settings))
    alice, bob = await sign_up(api), await sign_up(api)
    env = {"PRESENCE_TTL_SECONDS": "3", "GATEWAY_API_URL": str(api.make_url("")).rstrip("/")}
    (one, one_port), (two, two_port) = [start_service("gateway", settings, **env) for _ in range(2)]
    try:
        wait_ready(one, one_port)
        wait_ready(two, two_port)
        async with aiohttp.ClientSession() as http:
            on_one = await http.ws_connect(
                f"ws://127.0.0.1:{one_port}/v1/stream", params={"access_token": alice.token}
            )
            on_two = await http.ws_connect(
                f"ws://127.0.0.1:{two_port}/v1/stream", params={"access_token": bob.token}
            )

            async def both_online() -> bool:
                return all(
                    [await redis_client.exists(keys.presence(int(u.id))) for u in (alice, bob)]
                )

            await eventually(both_online, seconds=10, what="both users online")
            await redis_client.publish(
                keys.user_channel(int(alice.id)), events.live_post({"id": "1"})
            )
            await redis_client.publish(
                keys.user_channel(int(bob.id)), events.live_post({"id": "2"})
            )
            assert (await ws_json(on_one))["id"] == "1"
            assert (await ws_json(on_two))["id"] == "2"

            one.send_signal(signal.SIGKILL)
            one.wait(timeout=10)
            await redis_client.publish(
                keys.user_channel(int(bob.id)), events.live_post({"id": "3"})
            )
            assert (await ws_json(on_two))["id"] == "3"

            async def alice_offline() -> bool:
                return not await redis_client.exists(keys.presence(int(alice.id)))

            await eventually(alice_offline, seconds=8, what="killed node's user offline")
            assert await redis_client.exists(keys.presence(int(bob.id)))
            await on_two.close()
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


async def test_sigterm_tells_clients_to_reconnect_and_exits_cleanly(
    settings: Settings, aiohttp_client: MakeClient
) -> None:
    api = await aiohttp_client(serve_api(settings))
    user = await sign_up(api)
    proc, port = start_service("gateway", settings, SHUTDOWN_TIMEOUT="4")
    try:
        wait_ready(proc, port)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"ws://127.0.0.1:{port}/v1/stream", params={"access_token": user.token}
            )
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert await ws_json(ws) == {"type": "reconnect"}
            message = await ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert message.data == Close.SHUTTING_DOWN
        output = proc.communicate(timeout=15)[0]
        assert proc.returncode == 0, output
        assert "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
