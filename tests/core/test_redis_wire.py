"""core/redis_address.py is the one Redis wire the two hand-written links share (the lean
script link of the feed path, the gateway's pub/sub link): how a command is packed and
which commands set a fresh connection up. Both links are checked here against a Redis of
the test's own that requires AUTH (an ACL user, and the default user's password)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core.lean_redis import LeanRedis, RefusedError
from core.redis_address import RedisAddress, pack
from gateway.broker import RedisBroker
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = pytest.mark.timeout(90)

USER, USER_PASSWORD = "feeder", "acl-secret-1"
DEFAULT_PASSWORD = "default-secret-1"


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert pack(b"PING") == b"*1\r\n$4\r\nPING\r\n"
    assert pack("SELECT", 12) == b"*2\r\n$6\r\nSELECT\r\n$2\r\n12\r\n"
    channels = [b"u:1", "u:é".encode(), b""]
    expected = b"*4\r\n$9\r\nSUBSCRIBE\r\n$3\r\nu:1\r\n$4\r\nu:\xc3\xa9\r\n$0\r\n\r\n"
    assert pack(b"SUBSCRIBE", *channels) == expected


def test_a_fresh_connection_authenticates_then_selects_its_database() -> None:
    assert RedisAddress().hello() == []
    assert RedisAddress(db=3).hello() == [("SELECT", 3)]
    assert RedisAddress(password="p").hello() == [("AUTH", "p")]
    acl = RedisAddress(username="u", password="p", db=2)
    assert acl.hello() == [("AUTH", "u", "p"), ("SELECT", 2)]
    assert acl.hello(select=False) == [("AUTH", "u", "p")]  # pub/sub: no database
    assert RedisAddress(username="u").hello() == []  # a user without a password: none


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A private Redis with an ACL user and a password on the default user."""
    with private_redis(tmp_path) as server:
        client = aioredis.from_url(server.url)
        try:
            await client.execute_command(  # type: ignore[no-untyped-call]  # untyped in redis-py
                "ACL", "SETUSER", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"
            )
            await client.config_set("requirepass", DEFAULT_PASSWORD)
        finally:
            await client.aclose()
        yield server


def address_of(server: PrivateRedis, **changes: object) -> RedisAddress:
    return dataclasses.replace(RedisAddress(port=server.port), **changes)  # type: ignore[arg-type]


async def test_the_lean_link_authenticates_and_selects_on_a_guarded_redis(
    guarded: PrivateRedis,
) -> None:
    db5 = guarded.url.rsplit("/", 1)[0] + "/5"
    check = aioredis.from_url(db5, password=DEFAULT_PASSWORD)
    try:
        for changes in (
            {"username": USER, "password": USER_PASSWORD, "db": 5},
            {"password": DEFAULT_PASSWORD, "db": 5},
        ):
            lean = LeanRedis(address_of(guarded, **changes), timeout=2.0)
            try:
                assert await lean.command("SET", "wire:key", str(changes)) == b"OK"
            finally:
                await lean.close()
            assert await check.get("wire:key") == str(changes).encode()  # in db 5
        lean = LeanRedis(address_of(guarded, username=USER, password="wrong", db=5), timeout=2.0)
        with pytest.raises(RefusedError):
            await lean.command("PING")
        await lean.close()
    finally:
        await check.aclose()


async def test_the_pubsub_link_authenticates_on_a_guarded_redis(guarded: PrivateRedis) -> None:
    got: list[tuple[bytes, bytes]] = []
    address = address_of(guarded, username=USER, password=USER_PASSWORD, db=5)
    broker = RedisBroker(address, "gw:wire-test", lambda c, m: got.append((c, m)), lambda: None)
    await broker.start()
    batches = asyncio.create_task(broker.run_subscriptions())
    publisher = aioredis.from_url(guarded.url, username=USER, password=USER_PASSWORD)
    try:
        await broker.subscribe([b"u:42"])
        assert await publisher.publish("u:42", b"hello") == 1
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert got == [(b"u:42", b"hello")]
    finally:
        await broker.close()
        batches.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batches
        await publisher.aclose()
    refused = RedisBroker(
        dataclasses.replace(address, password="wrong"),
        "gw:wire-test",
        lambda c, m: None,
        lambda: None,
    )
    with pytest.raises(ConnectionError):
        await refused.start()
    await refused.close()
