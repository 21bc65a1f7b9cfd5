"""The gateway's own WebSocket protocol (gateway/protocols/), served the way production
serves it, against hostile and unusual clients speaking raw bytes: broken handshakes,
unmasked, malformed, oversized and fragmented frames, control frames, silence. Also what
must still reach aiohttp (SSE, ops routes, an upgrade on a keep-alive connection aiohttp
already owns). Real Redis and Postgres."""

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import events, keys
from core.auth import TokenSigner
from core.settings import Settings
from gateway.codes import Close
from gateway.endpoints import NODE
from gateway.protocols import entry as front
from tests.support.api import port_of
from tests.support.gateway_server import GatewayServer, serve_gateway, websockets_of
from tests.support.live import SSEClient, ws_json
from tests.support.rawws import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    frame,
    http_exchange,
    read_head,
    upgrade_request,
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[GatewayServer], Awaitable[Client]]
PING_TEXT = b'{"type":"ping"}'


@pytest.fixture
def gateway_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, gateway_connects_per_ip=1_000_000)


@pytest.fixture
async def gw(gateway_settings: Settings, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(serve_gateway(gateway_settings))


@pytest.fixture
def new_user(settings: Settings) -> Callable[[], tuple[int, str]]:
    """A fresh user id (nobody else's channel) and a token for it."""
    signer = TokenSigner(settings.secret_key, 600)
    base = 9_300_000_000 + (uuid.uuid4().int % 1_000_000) * 1_000
    counter = iter(range(1000))

    def make() -> tuple[int, str]:
        user = base + next(counter)
        return user, signer.issue(user)

    return make


async def live(gw: Client, user: int, connections: int = 1) -> None:
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.live_connections(user) < connections:
            await asyncio.sleep(0.02)


async def open_ws(gw: Client, token: str, then: bytes = b"") -> RawWebSocket:
    return await RawWebSocket.connect(port_of(gw), f"/v1/stream?access_token={token}", then=then)


# -- handshakes ------------------------------------------------------------------------

VALID_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def head(*lines: str) -> bytes:
    return ("\r\n".join(["GET /v1/stream?access_token=x HTTP/1.1", *lines]) + "\r\n\r\n").encode()


UPGRADE = ("Host: a", "Upgrade: websocket", "Connection: Upgrade")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (head(*UPGRADE, "Sec-WebSocket-Version: 13"), 400),  # no key
        (head(*UPGRADE, "Sec-WebSocket-Key: short", "Sec-WebSocket-Version: 13"), 400),
        (
            head(
                *UPGRADE, "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==", "Sec-WebSocket-Version: 13"
            ),
            400,
        ),
        (
            head(*UPGRADE, *[f"Sec-WebSocket-Key: {VALID_KEY}"] * 2, "Sec-WebSocket-Version: 13"),
            400,
        ),  # the key twice
        (head(*UPGRADE, f"Sec-WebSocket-Key: {VALID_KEY}", "Sec-WebSocket-Version: 8"), 426),
        (head(*UPGRADE, f"Sec-WebSocket-Key: {VALID_KEY}"), 426),  # no version
        (
            head(
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
            ),
            400,
        ),  # no Host
        (
            head(
                *UPGRADE,
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
                "Content-Length: 4",
            ),
            400,
        ),  # a body on an upgrade
        (
            head(
                "Host: a",
                "Upgrade: websocket",
                "Connection: keep-alive",
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
            ),
            400,
        ),  # Connection without Upgrade
        (
            head(*UPGRADE, f"Sec-WebSocket-Key : {VALID_KEY}", "Sec-WebSocket-Version: 13"),
            400,
        ),  # space before the colon
        (
            head(
                *UPGRADE, f"Sec-WebSocket-Key: {VALID_KEY}", "Sec-WebSocket-Version: 13", " folded"
            ),
            400,
        ),  # obsolete line folding
        (
            head(
                *UPGRADE,
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
                "X-Bad: a\x01b",
            ),
            400,
        ),  # control character
        (
            head(
                *UPGRADE,
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
                *[f"X-Filler-{i}: {'y' * 100}" for i in range(90)],
            ),
            431,
        ),  # head over 8 KiB
    ],
)
async def test_broken_handshakes_are_http_errors(
    gw: Client, request_bytes: bytes, status: int
) -> None:
    answer = await http_exchange(port_of(gw), request_bytes)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert isinstance(error, dict) and set(error["error"]) == {"code", "message"}
    if status == 426:
        assert answer.headers["sec-websocket-version"] == "13"
    assert len(websockets_of(gw.app)) == 0  # nothing upgraded


async def test_an_origin_not_allowed_is_refused_before_the_upgrade(
    gateway_settings: Settings, aiohttp_client: MakeClient, new_user: Callable[[], tuple[int, str]]
) -> None:
    settings = dataclasses.replace(gateway_settings, gateway_allowed_origins="https://ok.example")
    gw = await aiohttp_client(serve_gateway(settings))
    _, token = new_user()
    path = f"/v1/stream?access_token={token}"
    answer = await http_exchange(port_of(gw), upgrade_request(path, "Origin: https://evil.example"))
    assert answer.status == 403
    assert answer.headers["access-control-allow-origin"] == "https://evil.example"
    error = answer.json()
    assert isinstance(error, dict) and error["error"]["code"] == "origin_not_allowed"
    ws = await RawWebSocket.connect(port_of(gw), path, "Origin: https://ok.example")
    ws.send(frame(TEXT, PING_TEXT))
    assert await ws.receive_json() == {"type": "pong"}
    ws.close()


async def test_a_head_that_never_completes_is_closed(
    gw: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "HEAD_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: a\r\n")  # and nothing more
    async with asyncio.timeout(10):
        assert await reader.read() == b""
    writer.close()


async def test_a_head_handed_to_aiohttp_that_never_finishes_is_cut(
    gateway_settings: Settings, aiohttp_client: MakeClient
) -> None:
    """Heads the front hands to aiohttp at their first line (anything but a stream
    request) waited for aiohttp's default keep-alive of an hour."""
    quick = dataclasses.replace(gateway_settings, http_keepalive_seconds=0.5)
    gw = await aiohttp_client(serve_gateway(quick))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")  # and nothing more
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


# -- frames ----------------------------------------------------------------------------


async def test_ping_frames_get_pongs_and_ping_messages_get_pong_events(
    gw: Client, new_user: Callable[[], tuple[int, str]]
) -> None:
    # The first frames arrive in the same packet as the upgrade request.
    _, token = new_user()
    ws = await open_ws(gw, token, then=frame(PING, b"hello"))
    assert await ws.receive() == (True, PONG, b"hello")
    ws.send(frame(TEXT, b"  " + PING_TEXT + b"\n"))
    assert await ws.receive_json() == {"type": "pong"}
    ws.send(frame(PING, b""))
    assert await ws.receive() == (True, PONG, b"")
    ws.close()


async def test_a_fragmented_message_within_the_limit_is_reassembled(
    gw: Client, new_user: Callable[[], tuple[int, str]]
) -> None:
    _, token = new_user()
    ws = await open_ws(gw, token)
    ws.send(frame(TEXT, b'{"type"', fin=False))
    ws.send(frame(PING, b"between"))  # control frames may come between fragments
    ws.send(frame(0x0, b':"pi', fin=False))
    ws.send(frame(0x0, b'ng"}'))
    assert await ws.receive() == (True, PONG, b"between")
    assert await ws.receive_json() == {"type": "pong"}
    # 4 096 bytes in all is still allowed (then refused as not a ping, not as too big).
    ws.send(frame(TEXT, b" " * 4000, fin=False) + frame(0x0, b" " * 96))
    assert await ws.close_code() == Close.POLICY
    ws.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([frame(TEXT, PING_TEXT, masked=False)], Close.PROTOCOL_ERROR),
        ([b"\xff" * 64], Close.PROTOCOL_ERROR),  # garbage: reserved bits and opcode
        ([frame(TEXT, PING_TEXT, rsv=4)], Close.PROTOCOL_ERROR),  # RSV1 (no deflate here)
        ([frame(0x3, b"x")], Close.PROTOCOL_ERROR),  # reserved data opcode
        ([frame(0xB, b"x")], Close.PROTOCOL_ERROR),  # reserved control opcode
        ([frame(PING, b"x" * 126)], Close.PROTOCOL_ERROR),  # control frame over 125 bytes
        ([frame(PING, b"x", fin=False)], Close.PROTOCOL_ERROR),  # fragmented control frame
        ([frame(0x0, b"x")], Close.PROTOCOL_ERROR),  # continuation of nothing
        ([frame(TEXT, b"a", fin=False), frame(TEXT, b"b")], Close.PROTOCOL_ERROR),
        ([frame(CLOSE, b"\x03")], Close.PROTOCOL_ERROR),  # 1-byte close payload
        ([frame(CLOSE, (1005).to_bytes(2, "big"))], Close.PROTOCOL_ERROR),  # never on the wire
        ([frame(TEXT, b"\xff\xfe")], Close.INVALID_DATA),  # text that is not UTF-8
        ([frame(BINARY, b"x" * 5000)], Close.TOO_BIG),
        ([frame(TEXT, b"x" * 70_000)], Close.TOO_BIG),  # 64-bit length
        ([frame(TEXT, b"x" * 3000, fin=False), frame(0x0, b"x" * 3000)], Close.TOO_BIG),
        ([frame(BINARY, b"\x00")], Close.POLICY),
        ([frame(TEXT, b"garbage")], Close.POLICY),
    ],
)
async def test_broken_or_forbidden_frames_close_with_their_code(
    gw: Client, new_user: Callable[[], tuple[int, str]], frames: list[bytes], code: Close
) -> None:
    user, token = new_user()
    ws = await open_ws(gw, token)
    await live(gw, user)
    for data in frames:
        ws.send(data)
    assert await ws.close_code() == code
    # The close handshake: we answer, the server hangs up and forgets the connection.
    ws.send(frame(CLOSE, int(code).to_bytes(2, "big")))
    assert await ws.closed_by_server()
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.connections(user):
            await asyncio.sleep(0.02)


async def test_a_client_close_is_echoed_and_the_server_hangs_up(
    gw: Client, new_user: Callable[[], tuple[int, str]], redis_client: aioredis.Redis
) -> None:
    user, token = new_user()
    ws = await open_ws(gw, token)
    await live(gw, user)
    ws.send(frame(CLOSE, (4321).to_bytes(2, "big") + "bye ✓".encode()))
    assert await ws.receive() == (True, CLOSE, (4321).to_bytes(2, "big"))
    assert await ws.closed_by_server()
    node = gw.app[NODE]
    async with asyncio.timeout(10):
        while node.hub.connections(user) or len(websockets_of(gw.app)):
            await asyncio.sleep(0.02)
    # An empty close frame gets an empty one back.
    _, token = new_user()
    ws = await open_ws(gw, token)
    ws.send(frame(CLOSE, b""))
    assert await ws.receive() == (True, CLOSE, b"")
    assert await ws.closed_by_server()


async def test_refusals_after_a_valid_handshake_are_close_codes(
    gw: Client, new_user: Callable[[], tuple[int, str]]
) -> None:
    ws = await RawWebSocket.connect(port_of(gw), "/v1/stream")
    assert await ws.close_code() == Close.UNAUTHORIZED
    ws.send(frame(CLOSE, (1000).to_bytes(2, "big")))
    assert await ws.closed_by_server()
    # Authorization header instead of the query; an invalid since.
    _, token = new_user()
    ws = await RawWebSocket.connect(
        port_of(gw), "/v1/stream?since=x", f"Authorization: Bearer {token}"
    )
    assert await ws.close_code() == Close.POLICY
    ws.close()
    await ws.writer.wait_closed()


# -- keepalive -------------------------------------------------------------------------


async def test_a_peer_that_never_answers_pings_is_dropped_and_one_that_does_is_kept(
    gateway_settings: Settings,
    aiohttp_client: MakeClient,
    new_user: Callable[[], tuple[int, str]],
) -> None:
    settings = dataclasses.replace(gateway_settings, gateway_ping_seconds=0.3)
    gw = await aiohttp_client(serve_gateway(settings))
    silent_user, silent_token = new_user()
    polite_user, polite_token = new_user()
    silent = await open_ws(gw, silent_token)
    polite = await open_ws(gw, polite_token)
    pings = 0

    async def answer_pings() -> None:  # as a browser does, whatever the page does
        nonlocal pings
        while True:
            _, opcode, payload = await polite.receive(timeout=30)
            if opcode == PING:
                pings += 1
                polite.send(frame(PONG, payload))

    answering = asyncio.create_task(answer_pings())
    try:
        await live(gw, silent_user)
        await live(gw, polite_user)
        assert (await silent.receive()) == (True, PING, b"")  # pinged, never answers
        assert await silent.closed_by_server()
        node = gw.app[NODE]
        async with asyncio.timeout(10):
            while node.hub.connections(silent_user):
                await asyncio.sleep(0.02)
        async with asyncio.timeout(10):
            while pings < 5:
                await asyncio.sleep(0.05)
        assert node.hub.connections(polite_user) == 1
    finally:
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)
        polite.close()


# -- the node's view, and what still goes to aiohttp -----------------------------------


async def test_upgraded_connections_are_counted_and_receive_events(
    gw: Client, new_user: Callable[[], tuple[int, str]], redis_client: aioredis.Redis
) -> None:
    user, token = new_user()
    ws = await open_ws(gw, token)
    await live(gw, user)
    assert len(websockets_of(gw.app)) == 1  # upgraded by the front, not by aiohttp
    assert gw.app[NODE].snapshot()["connections_websocket"] == 1
    metrics = await (await gw.get("/metrics")).text()
    assert 'gateway_connections{transport="websocket"} 1.0' in metrics
    await redis_client.publish(keys.user_channel(user), events.live_post({"id": "5"}))
    event = await ws.receive_json()
    assert isinstance(event, dict) and event["id"] == "5"
    ws.close()
    async with asyncio.timeout(10):
        while gw.app[NODE].snapshot()["connections_websocket"]:
            await asyncio.sleep(0.02)
    metrics = await (await gw.get("/metrics")).text()
    assert 'gateway_connections{transport="websocket"} 0.0' in metrics


async def test_sse_ops_routes_and_plain_requests_still_reach_aiohttp(
    gw: Client, new_user: Callable[[], tuple[int, str]], redis_client: aioredis.Redis
) -> None:
    user, token = new_user()
    # A fresh connection per request: each one goes through the front first.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(gw.make_url(path)) as resp:
                assert resp.status == 200, path
        async with http.get(gw.make_url("/v1/stream")) as resp:  # no upgrade: aiohttp's 400
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"  # in our shape
        async with http.options(
            gw.make_url("/v1/stream/sse"), headers={"Origin": "https://a.example"}
        ) as resp:
            assert resp.status in (200, 204, 405)
        resp = await http.get(
            gw.make_url("/v1/stream/sse"), headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        sse = SSEClient(resp)
        await live(gw, user)
        await redis_client.publish(keys.user_channel(user), events.live_post({"id": "8"}))
        assert (await sse.next()).id == "8"
        assert gw.app[NODE].snapshot()["connections_sse"] == 1
        resp.close()
    assert len(websockets_of(gw.app)) == 0
    # Bytes that cannot begin our request go to aiohttp at once (no head timeout).
    answer = await http_exchange(port_of(gw), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 5)
    assert answer.status == 400
    error = answer.json()  # aiohttp answers what it cannot parse itself: in our shape too
    assert isinstance(error, dict) and error["error"]["code"] == "malformed_request"


async def test_stream_requests_a_stream_cannot_answer_are_refused_quietly(
    gw: Client, new_user: Callable[[], tuple[int, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Found by fuzzing: HEAD opened a live SSE stream, HTTP/1.0 was a 500 (SSE) or a
    `HTTP/1.0 101` (WebSocket), and an SSE client hanging up at once logged a traceback."""
    _, token = new_user()
    node = gw.app[NODE]
    sse = f"/v1/stream/sse?access_token={token}"
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(f"HEAD {sse} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    async with asyncio.timeout(10):
        assert (await read_head(reader)).status == 405  # a HEAD answer has no body
    writer.close()
    for request in (
        f"GET {sse} HTTP/1.0\r\nHost: a\r\n\r\n",
        "\r\n".join(
            [
                f"GET /v1/stream?access_token={token} HTTP/1.0",
                *UPGRADE,
                f"Sec-WebSocket-Key: {VALID_KEY}",
                "Sec-WebSocket-Version: 13",
                "",
                "",
            ]
        ),
    ):
        answer = await http_exchange(port_of(gw), request.encode())
        assert answer.status == 505, request
        assert orjson.loads(answer.body)["error"]["code"] == "http_version"
    for _ in range(5):  # gone before its stream starts
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(f"GET {sse} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        await writer.drain()
        writer.close()
    async with asyncio.timeout(10):
        while node.snapshot()["connections_sse"]:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert node.snapshot()["connections_sse"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_upgrade_on_a_connection_aiohttp_already_owns_uses_the_fallback(
    gw: Client, new_user: Callable[[], tuple[int, str]], redis_client: aioredis.Redis
) -> None:
    user, token = new_user()
    connector = aiohttp.TCPConnector(limit=1)  # one pooled connection: it must be reused
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(gw.make_url("/healthz")) as resp:
            assert resp.status == 200
            await resp.read()
        ws = await http.ws_connect(gw.make_url("/v1/stream"), params={"access_token": token})
        await live(gw, user)
        assert len(websockets_of(gw.app)) == 0  # aiohttp's handler has it
        assert gw.app[NODE].snapshot()["connections_websocket"] == 1
        await redis_client.publish(keys.user_channel(user), events.live_post({"id": "9"}))
        assert (await ws_json(ws))["id"] == "9"
        await ws.send_str("garbage")
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == Close.POLICY


async def test_shutdown_tells_upgraded_clients_to_reconnect(
    gateway_settings: Settings, new_user: Callable[[], tuple[int, str]]
) -> None:
    server = serve_gateway(dataclasses.replace(gateway_settings, shutdown_timeout=4))
    await server.start_server()
    try:
        users = [new_user() for _ in range(3)]
        sockets = [
            await RawWebSocket.connect(port_of(server), f"/v1/stream?access_token={t}")
            for _, t in users
        ]
        node = server.app[NODE]
        async with asyncio.timeout(10):
            while node.hub.users < 3:
                await asyncio.sleep(0.02)
        closing = asyncio.create_task(server.close())
        for ws in sockets:
            assert await ws.receive_json() == {"type": "reconnect"}
            assert await ws.close_code() == Close.SHUTTING_DOWN
            ws.send(frame(CLOSE, (1012).to_bytes(2, "big")))
        await asyncio.wait_for(closing, 10)
        for ws in sockets:
            assert await ws.closed_by_server()
    finally:
        await server.close()
