"""Fixtures and helpers for tests that push to the APNs, FCM and Web Push stand-ins.

Bind the fixtures in a test module (`apns_standin = standins.apns_standin`, ...); they
need no Postgres, Redis or Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset

from core.settings import Settings
from standins.apns import ApnsStandin
from standins.fcm import FcmStandin
from standins.tls import LocalCA
from standins.webpush import WebPushStandin


@pytest.fixture(scope="session")
def standin_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(Path(tmp_path_factory.mktemp("standin-ca")))


@pytest.fixture
async def apns_standin(standin_ca: LocalCA) -> AsyncIterator[ApnsStandin]:
    async with ApnsStandin(standin_ca) as standin:
        yield standin


@pytest.fixture
async def fcm_standin(standin_ca: LocalCA) -> AsyncIterator[FcmStandin]:
    async with FcmStandin(standin_ca) as standin:
        yield standin


@pytest.fixture
async def webpush_standin(standin_ca: LocalCA) -> AsyncIterator[WebPushStandin]:
    async with WebPushStandin(standin_ca) as standin:
        yield standin


def push_settings(
    ca: LocalCA,
    apns: ApnsStandin | None = None,
    fcm: FcmStandin | None = None,
    **changes: Any,
) -> Settings:
    """Settings pointing the push adapters at the stand-ins (as `python -m standins`
    prints them for the push worker)."""
    settings = Settings(
        push_ca_file=str(ca.ca_file), push_allow_loopback=True, push_timeout_seconds=5.0
    )
    if apns is not None:
        settings = dataclasses.replace(
            settings,
            apns_key=apns.key_pem,
            apns_key_id=apns.key_id,
            apns_team_id=apns.team_id,
            apns_topic=apns.topic,
            apns_url=apns.url,
        )
    if fcm is not None:
        settings = dataclasses.replace(
            settings, fcm_credentials=json.dumps(fcm.credentials()), fcm_url=fcm.url
        )
    return dataclasses.replace(settings, **changes)


@dataclasses.dataclass(frozen=True)
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def h2_post(
    url: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    context: ssl.SSLContext,
) -> H2Response:
    """One hand-made HTTP/2 request (for what the adapters would never send)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    request = [(":method", "POST"), (":scheme", "https"), (":authority", parts.netloc)]
    conn.send_headers(stream_id, [*request, (":path", path), *headers], end_stream=not body)
    if body:
        conn.send_data(stream_id, body, end_stream=True)
    writer.write(conn.data_to_send())
    answer: dict[str, str] = {}
    data = bytearray()
    try:
        async with asyncio.timeout(5):
            done = False
            while not done:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed before the answer")
                for event in conn.receive_data(chunk):
                    if isinstance(event, ResponseReceived):
                        answer = dict(event.headers or ())  # type: ignore[arg-type]
                    elif isinstance(event, DataReceived):
                        data += event.data or b""
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                    elif isinstance(event, StreamEnded | StreamReset):
                        done = True
                writer.write(conn.data_to_send())
    finally:
        conn.close_connection()
        writer.write(conn.data_to_send())
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return H2Response(int(answer[":status"]), answer, bytes(data))


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says anything (not even TLS)."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


async def push_pipeline(
    settings: Settings,
    pointed: Settings,
    providers: tuple[str, ...],
    aiohttp_client: Callable[[web.Application | TestServer], Awaitable[TestClient[Any, Any]]],
) -> tuple[TestClient[Any, Any], Settings]:
    """The API server, fan-out and the push worker on the test stack, pointed at the
    stand-ins (`pointed`: push_settings(...)) for `providers` (their setting prefixes),
    with consumer groups of their own that start at the newest events. Returns the API
    client and the settings used, once both consumers hold their partitions."""
    from fanout.app import CONSUMER as FANOUT_CONSUMER
    from fanout.app import create_app as create_fanout
    from push.app import CONSUMER as PUSH_CONSUMER
    from push.app import create_app as create_push
    from tests.support.api_server import serve_api

    prefixes = (*(f"{p}_" for p in providers), "push_")
    live = dataclasses.replace(
        settings,
        **{
            f.name: getattr(pointed, f.name)
            for f in dataclasses.fields(pointed)
            if f.name.startswith(prefixes)
        },
    )
    live = dataclasses.replace(
        live,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="latest",
        push_group=f"push-{uuid.uuid4().hex[:8]}",
        push_offset_reset="latest",
    )
    api = await aiohttp_client(serve_api(live))
    fanout = await aiohttp_client(create_fanout(live))
    push = await aiohttp_client(create_push(live))
    async with asyncio.timeout(30):
        await fanout.app[FANOUT_CONSUMER].assigned.wait()
        await push.app[PUSH_CONSUMER].assigned.wait()
    return api, live
