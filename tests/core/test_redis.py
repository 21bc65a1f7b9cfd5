import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from core import keys
from core.clients import HiredisPackingConnection
from tests.support.redis_typed import close_pubsub, members


async def test_round_trip_and_timeline_ordering_is_exact(redis_client: aioredis.Redis) -> None:
    await redis_client.set("probe", "héllo")
    assert await redis_client.get("probe") == "héllo".encode()

    # Ids near 2**63 differ by 1; as float scores they would collide. Our member scheme
    # (fixed-width decimal, score 0) keeps exact order and makes re-adds idempotent.
    key = keys.timeline(42)
    ids = [2**63 - 3, 2**63 - 2, 2**63 - 1, 10, 9_999_999]
    await redis_client.delete(key)
    await redis_client.zadd(key, {keys.timeline_member(i): 0 for i in ids})
    await redis_client.zadd(key, {keys.timeline_member(ids[0]): 0})
    newest_first = await redis_client.zrevrange(key, 0, -1)
    assert [keys.post_id_from_member(m) for m in members(newest_first)] == sorted(ids, reverse=True)


async def test_pubsub_delivers_to_a_subscriber(redis_client: aioredis.Redis) -> None:
    pubsub = redis_client.pubsub()
    channel = keys.user_channel(7)
    await pubsub.subscribe(channel)
    try:
        assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"
        await redis_client.publish(channel, b"event")
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                break
        assert message is not None and message["data"] == b"event"
    finally:
        await close_pubsub(pubsub)


async def test_key_with_ttl_expires(redis_client: aioredis.Redis) -> None:
    key = keys.presence(99)
    await redis_client.set(key, b"1", px=100)
    assert await redis_client.exists(key) == 1
    await asyncio.sleep(0.3)
    assert await redis_client.exists(key) == 0


def test_hiredis_packing_matches_redis_py_byte_for_byte() -> None:
    fast, plain = HiredisPackingConnection(), Connection()
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", "ab12", 2, "tl:{1}", "online:{1}", b"\x00\xff\r\n$*-", 800, "u:", 7),
        ("ZADD", "k", 1.5, "é", -(2**63), 2**70, float("inf"), 1e-7),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT LIST",),
        ("SET", "k", memoryview(b"view")),
        ("SET", "k", bytearray(b"array")),  # hiredis refuses it: redis-py's packer
    ]
    for args in commands:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args)), args
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)
    latin = HiredisPackingConnection(encoding="latin-1")
    assert (
        b"".join(latin.pack_command("SET", "k", "é"))
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )


async def test_binary_values_and_pipelines_round_trip_through_the_hiredis_packer(
    redis_client: aioredis.Redis,
) -> None:
    assert redis_client.connection_pool.connection_class is HiredisPackingConnection
    payload = bytes(range(256)) * 64
    pipe = redis_client.pipeline(transaction=False)
    # redis-py types the asyncio pipeline's commands as awaitables; they return the pipeline.
    pipe.set("probe:bin", payload).get("probe:bin").delete("probe:bin")  # type: ignore[attr-defined]
    assert await pipe.execute() == [True, payload, 1]
    script = redis_client.register_script("return {ARGV[1], #ARGV[2], KEYS[1]}")
    assert await script(keys=["k:{1}"], args=[b"\r\n\x00", payload]) == [
        b"\r\n\x00",
        len(payload),
        b"k:{1}",
    ]
