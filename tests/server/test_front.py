"""server/http/fast_feed.py: the feed reads it answers itself must be exactly what aiohttp would
answer, and whatever it hands over (other routes, refusals, odd requests) must reach
aiohttp intact, on raw sockets so the bytes on the wire are what is tested."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.auth import TokenSigner
from core.metric_totals import counter_by
from core.settings import Settings
from server.http.fast_feed import FeedFront
from server.http.feed_head import FeedRequest, maybe_feed, parse_head
from server.metrics import METRICS
from server.stats import SERVER_STATS
from tests.support.api import User, follow, post, sign_up

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.timeout(60)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> dict[str, Any]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


class Conn:
    """One keep-alive connection, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def reply(self) -> Reply:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return Reply(int(status_line.split(" ")[1]), headers, body)

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    def close(self) -> None:
        self.writer.close()


Connect = Callable[[], Awaitable[Conn]]


@pytest.fixture
async def connect(api: Client) -> AsyncIterator[Connect]:
    opened: list[Conn] = []

    async def open_one() -> Conn:
        reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
        opened.append(Conn(reader, writer))
        return opened[-1]

    yield open_one
    for conn in opened:
        conn.close()


def front_of(api: Client) -> FeedFront:
    # The runner's server is the FeedFront standing in for the web.Server it wraps.
    front: object = api.server.runner.server if api.server.runner else None
    assert isinstance(front, FeedFront)
    return front


def feed_get(user: User, query: str = "", extra: str = "") -> bytes:
    target = "/v1/feed" + (f"?{query}" if query else "")
    return (
        f"GET {target} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {user.token}\r\n{extra}\r\n"
    ).encode()


async def reader_with_posts(api: Client, n: int) -> tuple[User, list[str]]:
    me, author = await sign_up(api), await sign_up(api)
    await follow(api, me, author)
    ids = [await post(api, author, f"post {i} ✨ עברית e\u0301") for i in range(n)]
    return me, ids[::-1]


async def test_feed_pages_answered_by_the_front_equal_aiohttps(
    api: Client, connect: Connect
) -> None:
    me, ids = await reader_with_posts(api, 7)
    conn = await connect()
    front = front_of(api)
    await conn.send(feed_get(me, "limit=3"))
    fast = await conn.reply()
    assert any(p.task is None for p in front.protocols)  # still ours: the front answered
    # An unknown parameter is not the front's to read: aiohttp answers the same page.
    slow_conn = await connect()
    await slow_conn.send(feed_get(me, "limit=3&x=1"))
    slow = await slow_conn.reply()
    assert fast.status == slow.status == 200
    assert fast.body == slow.body
    assert [p["id"] for p in fast.json()["posts"]] == ids[:3]
    assert fast.headers.keys() == slow.headers.keys()
    for name in ("content-type", "content-length", "server"):
        assert fast.headers[name] == slow.headers[name]
    # The cursor from the front's page leads on, through the front again.
    cursor = fast.json()["next_cursor"]
    await conn.send(feed_get(me, f"limit=3&cursor={cursor}"))
    second = await conn.reply()
    assert [p["id"] for p in second.json()["posts"]] == ids[3:6]


async def test_front_answers_count_in_metrics_and_the_dashboard(
    api: Client, connect: Connect
) -> None:
    me, _ = await reader_with_posts(api, 2)
    app = api.app
    assert app is not None
    before = counter_by(app[METRICS].requests, "route").get("/v1/feed", 0)
    conn = await connect()
    for _ in range(3):
        await conn.send(feed_get(me))
        assert (await conn.reply()).status == 200
    after = counter_by(app[METRICS].requests, "route")["/v1/feed"]
    assert after - before == 3
    count = app[SERVER_STATS].feed_reads.percentiles()["count"]
    assert count is not None and count >= 3


async def test_pipelined_requests_are_answered_in_order_across_the_hand_off(
    api: Client,
    connect: Connect,
) -> None:
    me, ids = await reader_with_posts(api, 3)
    conn = await connect()
    profile = f"GET /v1/users/{me.handle} HTTP/1.1\r\nHost: t\r\n{_auth(me)}\r\n".encode()
    await conn.send(feed_get(me, "limit=1") + feed_get(me, "limit=2") + profile + feed_get(me))
    first, second, third, fourth = [await conn.reply() for _ in range(4)]
    assert [p["id"] for p in first.json()["posts"]] == ids[:1]
    assert [p["id"] for p in second.json()["posts"]] == ids[:2]
    assert third.status == 200 and third.json()["handle"] == me.handle
    assert fourth.status == 200 and len(fourth.json()["posts"]) == 3


async def test_a_head_arriving_byte_by_byte_is_answered(api: Client, connect: Connect) -> None:
    me, ids = await reader_with_posts(api, 1)
    conn = await connect()
    for byte in feed_get(me):
        await conn.send(bytes([byte]))
    reply = await conn.reply()
    assert reply.status == 200 and [p["id"] for p in reply.json()["posts"]] == ids


def _auth(user: User) -> str:
    return f"Authorization: Bearer {user.token}\r\n"


async def test_refusals_are_aiohttps_in_the_one_error_shape(
    api: Client,
    settings: Settings,
    connect: Connect,
) -> None:
    me, _ = await reader_with_posts(api, 1)
    expired = TokenSigner(settings.secret_key, ttl_seconds=1).issue(
        int(me.id), now=time.time() - 10
    )
    forged = me.token[:-2] + ("AA" if not me.token.endswith("AA") else "BB")
    cases = [
        (
            f"GET /v1/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {expired}\r\n\r\n",
            401,
            "token_expired",
        ),
        (
            f"GET /v1/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {forged}\r\n\r\n",
            401,
            "invalid_token",
        ),
        (
            "GET /v1/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Basic abc\r\n\r\n",
            401,
            "invalid_token",
        ),
        ("GET /v1/feed HTTP/1.1\r\nHost: t\r\n\r\n", 401, "unauthorized"),
        ("GET /v1/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer\r\n\r\n", 401, "invalid_token"),
        (
            "GET /v1/feed HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer t\u00e9\r\n\r\n",
            401,
            "invalid_token",
        ),
        (f"GET /v1/feed HTTP/1.1\r\n{_auth(me)}\r\n", 400, None),  # no Host: aiohttp's 400
        (feed_get(me, "cursor=bm9wZQ").decode(), 422, "invalid_cursor"),
        (feed_get(me, "limit=0").decode(), 422, "invalid_field"),
        (feed_get(me, "limit=99999999999999999999").decode(), 422, "invalid_field"),
        (feed_get(me, "limit=%F0%9F%98%80").decode(), 422, "invalid_field"),
    ]
    for raw, status, code in cases:
        conn = await connect()
        await conn.send(raw.encode())
        reply = await conn.reply()
        assert reply.status == status, (raw, reply)
        if code is not None:
            error = reply.json()["error"]
            assert isinstance(error, dict) and error["code"] == code, (raw, error)


async def test_odd_requests_reach_aiohttp_whole(api: Client, connect: Connect) -> None:
    me, _ = await reader_with_posts(api, 2)
    front = front_of(api)
    # Percent-encoding is aiohttp's to decode: the same page.
    conn = await connect()
    await conn.send(feed_get(me, "limit=%31"))
    assert len((await conn.reply()).json()["posts"]) == 1
    host = "Host: t\r\n"
    odd = [
        f"HEAD /v1/feed HTTP/1.1\r\n{host}{_auth(me)}\r\n",
        f"GET /v1/feed HTTP/1.0\r\n{host}{_auth(me)}\r\n",
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}X-Odd: a\x00b\r\n\r\n",
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}X-Odd: a\r\n folded\r\n\r\n",
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}Content-Length: 2\r\n\r\n{{}}",
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}{_auth(me)}\r\n",
        f"GET /v1/feed HTTP/1.1\r\n{host}{host}{_auth(me)}\r\n",
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}Content-Length: 0\r\nContent-Length: 0\r\n\r\n",
        f"GET /v1/feed?limit=1&limit=2 HTTP/1.1\r\n{host}{_auth(me)}\r\n",
        f"GET /v1/feed/ HTTP/1.1\r\n{host}{_auth(me)}\r\n",
        f"GET /v1/feed HTTP/1.1\nAuthorization: Bearer {me.token}\n\n",  # bare LF
        f"GET /v1/feed HTTP/1.1\r\n{host}{_auth(me)}X-Big: {'a' * 9000}\r\n\r\n",
    ]
    for raw in odd:
        ours = len(front.protocols)
        conn = await connect()
        await conn.send(raw.encode())
        # aiohttp answers (or closes on what it cannot parse); the front has let go.
        assert await asyncio.wait_for(conn.reader.read(1), 10) in (b"H", b""), raw
        assert len(front.protocols) == ours, repr(raw[:90])


async def test_an_unfinished_head_that_can_never_finish_goes_to_aiohttp_at_once(
    api: Client, connect: Connect
) -> None:
    """A head with a bare CR or a NUL can never end in the CRLFCRLF the front waits for:
    it used to hold the connection until the client gave up; aiohttp refuses it now."""
    me, _ = await reader_with_posts(api, 1)
    front = front_of(api)
    for raw in (
        f"GET /v1/feed HTTP/1.1\rHost: t\r{_auth(me).strip()}\r\r",  # bare CRs only
        "GET /v1/feed HTTP/1.1\n\rHost: t\n\r\n\r",
        "GET /v1/feed\x00 HTTP/1.1\r\nHost: t\r\n",
    ):
        ours = len(front.protocols)
        conn = await connect()
        await conn.send(raw.encode())
        started = time.monotonic()
        answer = await asyncio.wait_for(conn.reader.read(12), 5)
        assert answer == b"" or (answer[:7], answer[8:]) == (b"HTTP/1.", b" 400"), raw
        assert time.monotonic() - started < 2.0
        assert len(front.protocols) == ours
    # A head that is merely unfinished (its CRLF split) is still waited for, and answered.
    conn = await connect()
    head = feed_get(me)
    await conn.send(head[:-1])
    await asyncio.sleep(0.2)
    await conn.send(head[-1:])
    assert (await conn.reply()).status == 200


def test_the_head_parser_takes_only_plain_feed_reads() -> None:
    plain = b"GET /v1/feed?limit=5&cursor=abc HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok"
    request = parse_head(plain)
    assert request == FeedRequest("Bearer tok", "5", "abc", keep_alive=True)
    closing = parse_head(plain + b"\r\nConnection: Keep-Alive, Close")
    assert closing is not None and not closing.keep_alive
    assert parse_head(plain + b"\r\nContent-Length: 0") == request
    assert parse_head(b"GET /v1/feed HTTP/1.1\r\nhost: h\r\nauthorization: bearer  t ") == (
        FeedRequest("bearer  t", None, None, keep_alive=True)
    )
    for odd in [
        plain.replace(b"GET", b"POST"),
        plain.replace(b"/v1/feed", b"/v1/feedx"),
        plain.replace(b"limit=5", b"limit=5&x"),
        plain + b"\r\nConnection: Upgrade",
        plain + b"\r\nTransfer-Encoding: chunked",
        plain + b"\r\nContent-Length: 0\r\nContent-Length: 0",  # aiohttp refuses it
        plain + b"\r\nExpect: 100-continue",
        plain + b"\r\nX-Bad Name: 1",
        plain + b"\r\nX-Ctl: \x7f",
        plain.replace(b"HTTP/1.1", b"HTTP/1.1 extra"),
    ]:
        assert parse_head(odd) is None, odd
    assert not maybe_feed(b"GET /v1/fee\xff") and maybe_feed(b"GET /v1/fe")


async def test_connection_close_is_honoured(api: Client, connect: Connect) -> None:
    me, _ = await reader_with_posts(api, 1)
    conn = await connect()
    await conn.send(feed_get(me, extra="Connection: close\r\n"))
    reply = await conn.reply()
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert await conn.closed()


async def test_a_client_leaving_mid_read_does_not_disturb_the_next(
    api: Client, connect: Connect
) -> None:
    me, ids = await reader_with_posts(api, 2)
    for _ in range(5):
        conn = await connect()
        await conn.send(feed_get(me))
        conn.writer.transport.abort()
    conn = await connect()
    await conn.send(feed_get(me))
    reply = await conn.reply()
    assert [p["id"] for p in reply.json()["posts"]] == ids
    await asyncio.sleep(0.2)
    assert all(not p._lost for p in front_of(api).protocols)  # the aborted ones are gone


async def test_shutdown_answers_the_read_in_flight_then_closes_everything(
    api: Client,
    connect: Connect,
) -> None:
    me, ids = await reader_with_posts(api, 2)
    front = front_of(api)
    idle = await connect()
    await idle.send(feed_get(me))
    assert (await idle.reply()).status == 200
    busy = await connect()
    await busy.send(feed_get(me))
    for _ in range(10_000):  # until the front has started answering it
        if any(p.task is not None for p in front.protocols):
            break
        await asyncio.sleep(0)
    # What the runner's cleanup does first (its sites stopped), while the read waits on
    # Redis: nothing else runs between the check above and this call.
    front.pre_shutdown()
    assert await idle.closed()
    reply = await busy.reply()
    assert reply.status == 200 and [p["id"] for p in reply.json()["posts"]] == ids
    assert reply.headers.get("connection") == "close"
    assert await busy.closed()
    await api.server.close()  # the rest of the runner's shutdown, bounded
    assert not front.protocols
