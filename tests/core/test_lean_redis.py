"""core/lean_redis.py against the real Redis: answers in order under concurrency, the
right db, NOSCRIPT recovery, and redis-py's errors for everything that goes wrong."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from core.lean_redis import LeanRedis, LeanScript
from core.redis_address import RedisAddress
from core.redis_gate import RedisGate, RedisUnavailable

ECHO = LeanScript("return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}")
BROKEN = LeanScript("return redis.call('INCR', KEYS[1])")


async def test_concurrent_calls_each_get_their_own_answer(redis_client: aioredis.Redis) -> None:
    await redis_client.set("lean:k", "in-this-db")
    lean = LeanRedis(RedisAddress.of(redis_client))
    try:
        answers = await asyncio.gather(
            *(lean.run(ECHO, [f"lean:{i}"], [i]) for i in range(300)),
            lean.run(ECHO, ["lean:k"], ["x"]),
        )
    finally:
        await lean.close()
    assert answers[:300] == [[f"lean:{i}".encode(), str(i).encode(), None] for i in range(300)]
    # Read from the test's own db (SELECT on connect), not db 0.
    assert answers[300] == [b"lean:k", b"x", b"in-this-db"]


async def test_scripts_flushed_from_redis_are_loaded_again(redis_client: aioredis.Redis) -> None:
    lean = LeanRedis(RedisAddress.of(redis_client))
    try:
        await redis_client.script_flush()
        assert (await lean.run(ECHO, ["a"], ["b"]))[:2] == [b"a", b"b"]
        await redis_client.script_flush()
        assert (await lean.run(ECHO, ["a"], ["c"]))[:2] == [b"a", b"c"]
    finally:
        await lean.close()


async def test_an_error_reply_is_a_response_error_and_the_link_stays_usable(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.set("lean:text", "not a number")
    lean = LeanRedis(RedisAddress.of(redis_client))
    try:
        with pytest.raises(redis.exceptions.ResponseError):
            await lean.run(BROKEN, ["lean:text"], [])
        assert await lean.run(BROKEN, ["lean:counter"], []) == 1
    finally:
        await lean.close()


async def test_commands_go_in_one_write_answer_in_order_and_an_error_raises(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.set("lean:text", "not a number")
    lean = LeanRedis(RedisAddress.of(redis_client))
    try:
        assert await lean.commands(
            [("SET", "lean:c", "1", "EX", 60), ("ZADD", "lean:z", 5, "m"), ("GET", "lean:c")]
        ) == [b"OK", 1, b"1"]
        with pytest.raises(redis.exceptions.ResponseError):
            await lean.commands([("INCR", "lean:c"), ("INCR", "lean:text")])
        assert await redis_client.get("lean:c") == b"2"  # the commands before it ran
        assert await lean.commands([]) == []
    finally:
        await lean.close()


async def test_unreachable_redis_is_a_connection_error(redis_client: aioredis.Redis) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on `port` now
    nowhere = dataclasses.replace(RedisAddress.of(redis_client), port=port)
    lean = LeanRedis(nowhere, timeout=1.0)
    with pytest.raises(redis.exceptions.ConnectionError):
        await lean.run(ECHO, ["a"], ["b"])


async def test_a_silent_redis_times_out_and_the_next_call_reconnects(
    redis_client: aioredis.Redis,
) -> None:
    """A peer that accepts and never answers: the call fails after the deadline, and the
    link is dropped, so calls behind it do not wait on it too."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    real = RedisAddress.of(redis_client)
    address = dataclasses.replace(real, port=port, db=0, password=None)
    # No back-off: the call after a timeout is the gate's probe at once.
    lean = LeanRedis(address, timeout=0.3, gate=RedisGate("silent", 0.6, first_backoff=0))
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await lean.run(ECHO, ["a"], ["b"])
        with pytest.raises(redis.exceptions.TimeoutError):
            await lean.run(ECHO, ["a"], ["b"])
        assert len(connections) == 2  # the first link was dropped, a new one opened
    finally:
        await lean.close()
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


def is_down(gate: RedisGate) -> bool:
    """`gate.down` read afresh: mypy keeps an attribute narrowed across awaits."""
    return gate.down


async def test_while_redis_is_silent_one_call_probes_and_the_others_fail_at_once(
    redis_client: aioredis.Redis,
) -> None:
    """After a timeout, calls do not each wait to connect and time out in turn (behind
    the connect lock, the k-th waited k deadlines): they are refused at once, but for one
    probe at a time, until Redis answers a probe."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_port = server.sockets[0].getsockname()[1]
    real = RedisAddress.of(redis_client)
    address = dataclasses.replace(real, port=silent_port)
    gate = RedisGate("silent", 1.0, first_backoff=0)
    lean = LeanRedis(address, timeout=0.3, gate=gate)
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await lean.command("PING")
        assert gate.down
        # The next call is the probe (no back-off here); the 29 beside it are refused.
        outcomes = await asyncio.gather(
            *(lean.command("PING") for _ in range(30)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, RedisUnavailable)]
        probes = [o for o in outcomes if isinstance(o, redis.exceptions.TimeoutError)]
        assert (len(refused), len(probes)) == (29, 1), outcomes
        assert isinstance(refused[0], redis.exceptions.ConnectionError)  # what callers catch
        assert len(connections) == 2  # one per probe, none per refused call
        # Redis answers a probe (a client of the real Redis sharing the gate, as the feed's
        # lean link shares the redis-py client's): the gate opens for everyone.
        answering = LeanRedis(real, timeout=0.3, gate=gate)
        try:
            assert await answering.command("PING") == b"PONG"
            assert not is_down(gate)
            pings = await asyncio.gather(*(answering.command("PING") for _ in range(5)))
            assert pings == [b"PONG"] * 5
        finally:
            await answering.close()
    finally:
        await lean.close()
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()
