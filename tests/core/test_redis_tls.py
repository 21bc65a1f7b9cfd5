"""Every wire client against a Redis that speaks only TLS and wants a password (as
managed Redis services do): the services' redis-py client built from REDIS_URL, the
feed's lean client and the gateway's pub/sub link, both of which open their own
connections from core/redis_address.py's reading of that client."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from core.clients import create_any_redis
from core.lean_redis import LeanRedis, LeanScript
from core.redis_address import RedisAddress
from core.settings import Settings
from gateway.broker import RedisBroker
from tests.support.tls_redis import tls_redis

ECHO = LeanScript("return {KEYS[1], redis.call('GET', KEYS[1])}")


@pytest.fixture
async def tls_client(settings: Settings, tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    with tls_redis(tmp_path) as server:
        client = await create_any_redis(dataclasses.replace(settings, redis_url=server.url))
        assert isinstance(client, aioredis.Redis)
        try:
            yield client
        finally:
            await client.aclose()


async def test_the_lean_client_reads_over_tls_with_the_clients_password(
    tls_client: aioredis.Redis,
) -> None:
    await tls_client.set("tls:k", "over TLS")
    address = RedisAddress.of(tls_client)
    assert address.ssl_context is not None
    assert address.ssl_context.verify_mode is ssl.CERT_REQUIRED  # the URL's CA, checked
    lean = LeanRedis(address, timeout=5.0)
    try:
        assert await lean.run(ECHO, ["tls:k"], []) == [b"tls:k", b"over TLS"]
        assert await lean.mget(["tls:k", "tls:none"]) == [b"over TLS", None]
    finally:
        await lean.close()
    # Without TLS the same address gets no answer it can use: the server speaks TLS only.
    plain = LeanRedis(dataclasses.replace(address, ssl_context=None), timeout=2.0)
    try:
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await plain.command("GET", "tls:k")
    finally:
        await plain.close()


async def test_the_gateways_pubsub_link_subscribes_over_tls(
    tls_client: aioredis.Redis,
) -> None:
    got: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    broker = RedisBroker(
        RedisAddress.of(tls_client), "gw:tls", lambda c, p: got.put_nowait((c, p)), lambda: None
    )
    await broker.start()
    tasks = [asyncio.create_task(broker.run()), asyncio.create_task(broker.run_subscriptions())]
    try:
        await asyncio.wait_for(broker.subscribe([b"u:{7}"]), 10)
        await tls_client.publish("u:{7}", "hello over TLS")
        assert await asyncio.wait_for(got.get(), 10) == (b"u:{7}", b"hello over TLS")
    finally:
        await broker.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
