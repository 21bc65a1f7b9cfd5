"""GATEWAY_NATIVE_WEBSOCKET=false: every WebSocket is served by aiohttp's
WebSocketResponse (gateway/endpoints.py), gateway/protocols/ out of the way. The key
behaviours of test_gateway.py and test_gateway_live.py (delivery, presence, slow
consumers, refusals and close codes, limits, resume, reset) run again here, unchanged,
in that mode, and the frame-level ones of test_gateway_protocol.py in
test_gateway_native_off_frames.py."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import events, keys
from core.settings import Settings
from gateway.codes import Close
from gateway.endpoints import NODE
from tests.gateway import test_gateway

# Collected again in this module, so they see the settings below (pytest resolves a
# test's fixtures from the module it is collected in).
from tests.gateway.test_gateway import (  # noqa: F401
    test_a_burst_of_connects_cannot_pass_the_limit_per_user,
    test_an_event_reaches_every_connection_of_its_user_and_no_one_else,
    test_bad_credentials_and_parameters_are_refused_with_a_close_code,
    test_connection_limit_per_user,
    test_connection_rate_per_address,
    test_garbage_and_oversized_frames_close_the_connection,
    test_presence_follows_connections,
    test_slow_client_is_closed_and_others_are_unaffected,
)
from tests.gateway.test_gateway_live import (  # noqa: F401
    stack,
    test_a_client_too_far_behind_is_told_to_reset,
    test_a_resume_while_the_api_server_is_away_is_told_to_retry_then_resumes,
    test_resume_after_a_disconnect_replays_20_posts_in_order_once_then_goes_live,
)
from tests.support.api import sign_up
from tests.support.gateway_server import serve_gateway, websockets_of
from tests.support.live import ws_json

Client = TestClient[web.Request, web.Application]
gateway_settings, gw = test_gateway.gateway_settings, test_gateway.gw  # their fixtures


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, gateway_native_websocket=False)


async def test_with_native_websockets_off_aiohttp_serves_every_connection(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    user = await sign_up(api)
    ws = await gw.ws_connect("/v1/stream", params={"access_token": user.token})
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.live_connections(int(user.id)) < 1:
            await asyncio.sleep(0.02)
    assert len(websockets_of(gw.app)) == 0  # gateway.endpoints.websocket has it
    assert node.snapshot()["connections_websocket"] == 1
    await redis_client.publish(keys.user_channel(int(user.id)), events.live_post({"id": "7"}))
    assert (await ws_json(ws))["id"] == "7"
    await ws.close()


async def test_with_native_websockets_off_shutdown_tells_clients_to_reconnect(
    api: Client, gateway_settings: Settings
) -> None:
    server = serve_gateway(dataclasses.replace(gateway_settings, shutdown_timeout=4))
    await server.start_server()
    try:
        users = [await sign_up(api) for _ in range(3)]
        async with aiohttp.ClientSession() as http:
            sockets = [
                await http.ws_connect(
                    server.make_url("/v1/stream"), params={"access_token": u.token}
                )
                for u in users
            ]
            node = server.app[NODE]
            async with asyncio.timeout(10):
                while node.hub.users < 3:
                    await asyncio.sleep(0.02)
            closing = asyncio.create_task(server.close())
            for ws in sockets:
                assert await ws_json(ws) == {"type": "reconnect"}
                message = await ws.receive(timeout=5)
                assert message.type is aiohttp.WSMsgType.CLOSE
                assert message.data == Close.SHUTTING_DOWN
            await asyncio.wait_for(closing, 10)
    finally:
        await server.close()
