import asyncio

import redis.asyncio as aioredis

from core import keys


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
    assert [keys.post_id_from_member(m) for m in newest_first] == sorted(ids, reverse=True)


async def test_pubsub_delivers_to_a_subscriber(redis_client: aioredis.Redis) -> None:
    pubsub = redis_client.pubsub()
    channel = keys.user_channel(7)
    await pubsub.subscribe(channel)
    try:
        assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"  # type: ignore[index]
        await redis_client.publish(channel, b"event")
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                break
        assert message is not None and message["data"] == b"event"
    finally:
        await pubsub.aclose()


async def test_key_with_ttl_expires(redis_client: aioredis.Redis) -> None:
    key = keys.presence(99)
    await redis_client.set(key, b"1", px=100)
    assert await redis_client.exists(key) == 1
    await asyncio.sleep(0.3)
    assert await redis_client.exists(key) == 0
