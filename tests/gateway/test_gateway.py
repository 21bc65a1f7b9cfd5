"""The gateway with real WebSocket and SSE clients, real Redis pub/sub and the real API
server for resume."""

import asyncio
import dataclasses
import socket

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import events, keys, stats
from core.auth import TokenSigner
from core.settings import Settings
from gateway.codes import Close
from gateway.endpoints import NODE
from tests.support.api import MakeClient, User, port_of, sign_up
from tests.support.gateway_server import serve_gateway
from tests.support.live import SSEClient, ws_json

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def gateway_settings(settings: Settings, api: Client) -> Settings:
    return dataclasses.replace(
        settings,
        gateway_api_url=str(api.make_url("")).rstrip("/"),
        gateway_queue_bytes=256 * 1024,
        gateway_connects_per_ip=1000,
    )


@pytest.fixture
async def gw(gateway_settings: Settings, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(serve_gateway(gateway_settings))


async def connect(gw: Client, user: User, **params: str) -> aiohttp.ClientWebSocketResponse:
    return await gw.ws_connect("/v1/stream", params={"access_token": user.token, **params})


async def open_sse(gw: Client, user: User, **headers: str) -> SSEClient:
    resp = await gw.get("/v1/stream/sse", headers={**user.auth, **headers})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return SSEClient(resp)


def post_event(post_id: int, text: str = "hi") -> bytes:
    return events.live_post({"id": str(post_id), "text": text})


async def until_live(gw: Client, user: User, connections: int) -> None:
    """A handshake completes before the node has subscribed the connection's channels,
    marked its user online and sent what it missed; events published before that are
    (rightly) not live for it. Wait until it is."""
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.live_connections(int(user.id)) < connections:
            await asyncio.sleep(0.02)


async def test_an_event_reaches_every_connection_of_its_user_and_no_one_else(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    alice, bob = await sign_up(api), await sign_up(api)
    tabs = [await connect(gw, alice), await connect(gw, alice)]
    sse = await open_sse(gw, alice)
    other = await connect(gw, bob)
    await until_live(gw, alice, 3)
    await until_live(gw, bob, 1)
    await redis_client.publish(keys.user_channel(int(alice.id)), post_event(101, "for alice"))
    await redis_client.publish(keys.user_channel(int(bob.id)), post_event(202, "for bob"))
    for tab in tabs:
        assert (await ws_json(tab))["id"] == "101"
    event = await sse.next()
    assert event.id == "101" and event.json()["data"]["text"] == "for alice"
    assert sse.retry == 2000
    # Bob's first event is his own: Alice's never reached him.
    assert (await ws_json(other))["id"] == "202"
    for ws in [*tabs, other]:
        await ws.close()


async def test_presence_follows_connections(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    user = await sign_up(api)
    first, second = await connect(gw, user), await connect(gw, user)
    await until_live(gw, user, 2)
    assert await redis_client.exists(keys.presence(int(user.id))) == 1
    await first.close()
    await asyncio.sleep(0.2)
    assert await redis_client.exists(keys.presence(int(user.id))) == 1  # one tab still open
    await second.close()
    async with asyncio.timeout(5):
        while await redis_client.exists(keys.presence(int(user.id))):
            await asyncio.sleep(0.05)


async def test_slow_client_is_closed_and_others_are_unaffected(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    slow_user, fast_user = await sign_up(api), await sign_up(api)
    fast = await connect(gw, fast_user)
    reader, writer = await raw_ws_that_never_reads(port_of(gw), slow_user.token)
    try:
        await until_live(gw, slow_user, 1)
        await until_live(gw, fast_user, 1)
        big = "x" * 4000
        markers: list[int] = []
        # Publish until the gateway gives up on the stalled client (loopback kernel
        # buffers absorb a few MB first); the fast client gets a marker every 100.
        for i in range(1, 20_001):
            await redis_client.publish(keys.user_channel(int(slow_user.id)), post_event(i, big))
            if i % 100 == 0:
                markers.append(i)
                await redis_client.publish(keys.user_channel(int(fast_user.id)), post_event(i))
                metrics = await (await gw.get("/metrics")).text()
                if "gateway_slow_disconnects_total 1.0" in metrics:
                    break
        else:
            raise AssertionError("the stalled client was never closed")
        # Read the stalled socket at once: the gateway cuts a closing connection whose
        # peer still does not read CLOSE_TIMEOUT after the close, and on a busy machine
        # reading the fast client's markers first could take that long.
        assert await close_code_of(reader) == Close.SLOW_CONSUMER
        got = [int((await ws_json(fast))["id"]) for _ in markers]
        assert got == markers
    finally:
        writer.close()
        await fast.close()


async def raw_ws_that_never_reads(
    port: int, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake and then stops reading: once its
    buffers fill, the server's writes back up, as with a stalled phone.

    Its receive buffer is small (so the test publishes less) but set before connecting
    and above a loopback segment (64 KiB): with a 4 KiB buffer the kernel could never
    open a window worth a segment, and the gateway's data, close frame and FIN then
    crawled out on zero-window probes whose back-off reached tens of seconds."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        f"GET /v1/stream?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head
    return reader, writer


async def close_code_of(reader: asyncio.StreamReader) -> int:
    """Reads frames until the close frame; returns its code. Megabytes may be queued
    before it: they are read in bulk and parsed from memory, not a few awaits per frame
    through a 4 KiB StreamReader."""
    data = bytearray()
    async with asyncio.timeout(60):
        while chunk := await reader.read(1 << 20):
            data += chunk
            pos = 0
            while (frame := _frame_at(data, pos)) is not None:
                opcode, payload, pos = frame
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big")
            del data[:pos]
    raise AssertionError(f"the connection ended without a close frame ({len(data)} bytes left)")


def _frame_at(data: bytearray, pos: int) -> tuple[int, bytes, int] | None:
    """The server frame (unmasked) at `pos`: opcode, payload and where the next begins;
    None while it is incomplete."""
    if len(data) < pos + 2:
        return None
    opcode, size, start = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(data) < start + width:
            return None
        size = int.from_bytes(data[start : start + width], "big")
        start += width
    if len(data) < start + size:
        return None
    return opcode, bytes(data[start : start + size]), start + size


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, Close.UNAUTHORIZED),
        ({"access_token": "garbage"}, Close.UNAUTHORIZED),
        ({"access_token": "forged"}, Close.UNAUTHORIZED),
        ({"access_token": "expired"}, Close.UNAUTHORIZED),
        ({"access_token": "valid", "since": "not-an-id"}, Close.POLICY),
    ],
)
async def test_bad_credentials_and_parameters_are_refused_with_a_close_code(
    api: Client, gw: Client, settings: Settings, params: dict[str, str], code: int
) -> None:
    user = await sign_up(api)
    tokens = {
        "forged": TokenSigner("another-secret-of-length", 60).issue(int(user.id)),
        "expired": TokenSigner(settings.secret_key, 60).issue(int(user.id), now=1000),
        "valid": user.token,
    }
    if params.get("access_token") in tokens:
        params = {**params, "access_token": tokens[params["access_token"]]}
    ws = await gw.ws_connect("/v1/stream", params=params)
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == code


async def test_garbage_and_oversized_frames_close_the_connection(api: Client, gw: Client) -> None:
    user = await sign_up(api)
    ws = await connect(gw, user)
    await ws.send_str('{"type":"ping"}')
    assert await ws_json(ws) == {"type": "pong"}
    await ws.send_str("garbage")
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.POLICY
    ws = await connect(gw, user)
    await ws.send_bytes(b"\x00" * 5000)
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.TOO_BIG


async def test_sse_refusals_are_json_errors(api: Client, gw: Client) -> None:
    user = await sign_up(api)
    resp = await gw.get("/v1/stream/sse")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    resp = await gw.get("/v1/stream/sse", params={"access_token": user.token + "x"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_token"
    resp = await gw.get("/v1/stream/sse", headers={**user.auth, "Last-Event-ID": "x" * 30})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_since"


async def test_connection_limit_per_user(
    api: Client, gateway_settings: Settings, aiohttp_client: MakeClient
) -> None:
    gw = await aiohttp_client(
        serve_gateway(dataclasses.replace(gateway_settings, gateway_max_connections_per_user=2))
    )
    user = await sign_up(api)
    kept = [await connect(gw, user), await connect(gw, user)]
    await asyncio.sleep(0.2)
    third = await connect(gw, user)
    message = await third.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.TOO_MANY_CONNECTIONS
    for ws in kept:
        await ws.close()


async def test_a_burst_of_connects_cannot_pass_the_limit_per_user(
    api: Client, gateway_settings: Settings, aiohttp_client: MakeClient
) -> None:
    """Each connect was admitted before the others had joined (a lookup awaited in
    between): six at once all stayed open with a limit of two."""
    gw = await aiohttp_client(
        serve_gateway(dataclasses.replace(gateway_settings, gateway_max_connections_per_user=2))
    )
    user = await sign_up(api)
    burst = await asyncio.gather(*(connect(gw, user) for _ in range(6)))
    codes = await close_codes(burst, 1.0)
    assert sorted(codes) == [0, 0] + [Close.TOO_MANY_CONNECTIONS] * 4


async def test_connection_rate_per_address(
    api: Client, gateway_settings: Settings, aiohttp_client: MakeClient
) -> None:
    gw = await aiohttp_client(
        serve_gateway(dataclasses.replace(gateway_settings, gateway_connects_per_ip=3))
    )
    user = await sign_up(api)
    opened = [await connect(gw, user) for _ in range(6)]  # faster than 3 per second
    codes = await close_codes(opened, 0.3)
    assert Close.RATE_LIMITED in codes and codes[0] == 0


async def close_codes(sockets: list[aiohttp.ClientWebSocketResponse], wait: float) -> list[int]:
    """Each socket's close code, or 0 for one still open after `wait` s; all closed after."""
    codes = []
    for ws in sockets:
        try:
            message = await ws.receive(timeout=wait)
        except TimeoutError:
            codes.append(0)  # open: nothing to say yet
        else:
            codes.append(message.data if message.type is aiohttp.WSMsgType.CLOSE else -1)
        await ws.close()
    return codes


async def test_stats_are_reported_to_redis_every_second(
    api: Client, gw: Client, redis_client: aioredis.Redis
) -> None:
    user = await sign_up(api)
    ws = await connect(gw, user)
    sse = await open_sse(gw, user)
    await until_live(gw, user, 2)
    async with asyncio.timeout(5):
        while True:
            found = await stats.read_all(redis_client, "gateway")
            if any(
                s.get("connections_websocket") == 1 and s.get("connections_sse") == 1 for s in found
            ):
                break
            await asyncio.sleep(0.2)
    await ws.close()
    del sse
