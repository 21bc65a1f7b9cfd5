"""Inputs a fuzzing pass (session 12) answered with a 500 or held without an answer: each
must get a 4xx in the one error shape now, and nothing logged as a server error."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.auth import TokenSigner
from core.logs import MalformedRequests, quiet_malformed_requests
from core.metric_totals import counter_by
from core.settings import Settings
from server.http import validation
from server.metrics import METRICS
from tests.support.api import error_of, sign_up
from tests.support.api_server import serve_api
from tests.support.rawws import read_head

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.timeout(60)


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def raw_exchange(api: Client, raw: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10) if read else b""
    finally:
        writer.close()


async def test_a_body_that_does_not_decode_as_its_content_encoding_says_is_a_400(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    me = await sign_up(api)
    json_type = {"Content-Type": "application/json"}
    for path, auth in (("/v1/sessions", {}), ("/v1/posts", me.auth), ("/v1/users", {})):
        resp = await api.post(
            path, data=b"not gzip", headers={"Content-Encoding": "gzip", **json_type, **auth}
        )
        assert resp.status == 400, path
        assert (await error_of(resp))["code"] == "invalid_json"
        assert resp.headers["Connection"] == "close"  # the parser cannot go on after it
    assert server_errors(caplog) == []
    deflate = {"Content-Encoding": "deflate"}
    resp = await api.post("/v1/sessions", data=b"not deflate", headers=deflate)
    assert resp.status == 400
    assert (await error_of(resp))["code"] == "invalid_json"


async def test_a_client_leaving_mid_body_is_recorded_as_gone_not_as_a_server_error(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    me = await sign_up(api)
    head = (
        f"POST /v1/posts HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {me.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    await raw_exchange(api, head.encode() + b'{"text":', read=False)
    assert api.app is not None
    requests = api.app[METRICS].requests

    def gone() -> int:
        return counter_by(requests, "status").get("499", 0)

    deadline = time.monotonic() + 5
    while gone() < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert gone() == 1
    assert counter_by(requests, "status").get("500", 0) == 0
    assert server_errors(caplog) == []


async def test_a_body_that_trickles_in_is_cut_off_with_a_408(
    api: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It held a connection and a handler for as long as its client liked."""
    monkeypatch.setattr(validation, "BODY_SECONDS", 0.3)
    me = await sign_up(api)
    head = (
        f"POST /v1/posts HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {me.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    answer = await raw_exchange(api, head.encode() + b'{"text":')
    assert time.monotonic() - started < 5
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408")
    assert b"\r\nConnection: close" in head_part
    assert orjson.loads(body)["error"]["code"] == "body_timeout"
    assert server_errors(caplog) == []


async def test_an_operator_token_that_is_not_utf8_is_refused(
    api: Client, settings: Settings
) -> None:
    raw = b"GET /v1/ops/stats HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    answer = await raw_exchange(api, raw)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    body = answer.partition(b"\r\n\r\n")[2]
    assert orjson.loads(body)["error"]["code"] == "invalid_token"


async def test_a_host_header_no_url_can_be_built_on_is_a_400(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    for host in ("a:b:c", "a:99999", "[", "1.2.3.4:abc", "xn--a.b:1:2"):
        resp = await api.get("/client-config.json", headers={"Host": host})
        assert resp.status == 400, host
        assert (await error_of(resp))["code"] == "invalid_host"
    assert server_errors(caplog) == []


async def test_a_static_name_the_filesystem_refuses_is_a_404(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    resp = await api.get("/static/" + "a" * 300)
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "not_found"
    assert (await api.get("/static/app.js")).status == 200
    assert server_errors(caplog) == []


def signed(settings: Settings, claims: dict[str, object]) -> str:
    """A token with these claims, signed with the server's secret (only a leaked secret,
    a reset database, or another environment's token can carry such claims)."""
    return TokenSigner(settings.secret_key, 60).sign(claims)


async def test_well_signed_tokens_with_an_odd_or_unknown_user_are_401(
    api: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    me = await sign_up(api)
    good = signed(settings, {"sub": me.id, "iat": now, "exp": now + 60})
    assert (await api.get("/v1/feed", headers={"Authorization": f"Bearer {good}"})).status == 200
    odd = ("-5", "0", "1_2", " 7", "١٢٣", "9223372036854775808", str(2**70), 15, 1.5, None)
    for sub in odd:
        token = signed(settings, {"sub": sub, "iat": now, "exp": now + 60})
        auth = {"Authorization": f"Bearer {token}"}
        for resp in (
            await api.get("/v1/feed", headers=auth),
            await api.post("/v1/posts", json={"text": "hi"}, headers=auth),
        ):
            assert resp.status == 401, sub
            assert (await error_of(resp))["code"] == "invalid_token"
    # A user id of the right form that this database does not have: writes cannot be
    # made for them, and say so as a token problem.
    ghost = signed(settings, {"sub": "123456789", "iat": now, "exp": now + 60})
    auth = {"Authorization": f"Bearer {ghost}"}
    for resp in (
        await api.post("/v1/posts", json={"text": "hi"}, headers=auth),
        await api.post(f"/v1/users/{me.id}/follow", headers=auth),
        await api.post("/v1/devices", json={"kind": "apns", "token": "ab" * 32}, headers=auth),
    ):
        assert resp.status == 401
        assert await error_of(resp) == {
            "code": "invalid_token",
            "message": "the token's user does not exist",
        }
    assert server_errors(caplog) == []


async def test_requests_aiohttp_cannot_parse_are_one_warning_line_not_an_error(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can send these; each was an ERROR with a traceback (services install the
    filter in core/logs.configure_logging)."""
    server_log = logging.getLogger("aiohttp.server")
    quiet_malformed_requests()
    quiet_malformed_requests()  # once, however often called
    assert sum(isinstance(f, MalformedRequests) for f in server_log.filters) == 1
    try:
        for raw in (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
            b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Encoding: deflate\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            b"GET /v1/feed?q= x&access_token=sekrit-token HTTP/1.1\r\nHost: t\r\n\r\n",
        ):
            answer = await raw_exchange(api, raw)
            assert answer[:7] == b"HTTP/1." and answer[8:12] == b" 400", answer[:100]
    finally:
        for f in [f for f in server_log.filters if isinstance(f, MalformedRequests)]:
            server_log.removeFilter(f)
    ours = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(ours) == 3
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in ours)
    assert "Error handling request" in ours[0].getMessage()
    # aiohttp quotes the request line: a token in it is not written to the log
    assert "access_token=<redacted>" in ours[2].getMessage()
    assert not any("sekrit" in r.getMessage() for r in caplog.records)
    assert server_errors(caplog) == []


UNPARSEABLE = {
    "a header line over 8 190 bytes": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a request line over 8 190 bytes": b"GET /v1/feed?x=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "an unknown method": b"FROB /v1/feed HTTP/1.1\r\nHost: t\r\n\r\n",
    "a space in the target, with a token": b"GET /v1/feed?q= x&access_token=sekrit HTTP/1.1\r\n"
    b"Host: t\r\n\r\n",
    "a body encoding aiohttp has no decoder for": b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\n"
    b"Content-Encoding: br\r\nContent-Length: 3\r\n\r\nabc",
    "a chunk size that is not hex": b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "a bare LF inside a header": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: 1\nX-B: 2\r\n\r\n",
}


@pytest.mark.parametrize("raw", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
async def test_requests_aiohttp_cannot_parse_get_the_one_error_shape(
    api: Client, raw: bytes
) -> None:
    """aiohttp answers these itself, before any middleware: they were text/plain, with
    nothing for a client to read a code from (core/http_errors.py)."""
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        writer.write(raw)
        async with asyncio.timeout(10):
            answer = await read_head(reader)
            body = await reader.read()  # to EOF: the connection closes
    finally:
        writer.close()
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(body)
    error = orjson.loads(body)["error"]
    assert error["code"] == "malformed_request"
    assert error["message"] and "sekrit" not in error["message"]


async def test_a_head_that_never_finishes_is_cut_after_the_keepalive_timeout(
    settings: Settings, aiohttp_client: Callable[[TestServer], Awaitable[Client]]
) -> None:
    """A partial head held a connection (and a file descriptor) for aiohttp's default of
    an hour, feed-looking or not: a slow-loris client could pile them up."""
    quick = dataclasses.replace(settings, http_keepalive_seconds=0.5)
    api = await aiohttp_client(serve_api(quick))
    for partial in (b"GET /healthz HTTP/1.1\r\nHost: t\r\n", b"GET /v1/feed HTTP/1.1\r\nHo"):
        reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
        started = time.monotonic()
        writer.write(partial)
        assert await asyncio.wait_for(reader.read(), 10) == b"", partial  # closed, unanswered
        assert time.monotonic() - started < 5
        writer.close()
    # A keep-alive connection in use stays open; once idle, it is closed too.
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await read_head(reader)
            await reader.readexactly(int(answer.headers["content-length"]))
        assert answer.status == 200
        await asyncio.sleep(0.3)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
