"""Issue 22: a Redis restart or a dropped connection is not an outage, and an outage
costs a caller one Redis deadline at most, not one per caller waiting before it.

These tests have a Redis of their own (tests/support/private_redis.py), restarted,
stopped or black-holed (tests/support/blackhole.py) without the rest of the suite seeing
it; one for the module, started again before a test if the one before left it stopped.
Each test reads and writes only keys of its own (its names, its new users).

Restarts here block the event loop on purpose (`private.restart` is synchronous): the
clients' sockets then have their FIN unread when the next commands go out, which is
the dead pooled connection of the issue ("Connection closed by server" on first use).
A restart the loop watches is the easy case: redis-py and the lean link notice the
closed socket before using it. The API server meets dead connections through the
proxy's `forget()` instead (see that test).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core import keys
from core.clients import REDIS_CONNECT_TIMEOUT, REDIS_SOCKET_TIMEOUT, build_redis, gate_of
from core.lean_redis import LeanRedis
from core.redis_address import RedisAddress
from core.redis_gate import MAX_BACKOFF
from core.settings import Settings
from fanout.writer import TimelineWriter
from server.feed.home import REDIS_READ_TIMEOUT
from server.feed.hydrate import REDIS_ERRORS
from tests.support.api import Client, MakeClient, User, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.blackhole import BlackHole
from tests.support.private_redis import PrivateRedis, private_redis

pytestmark = pytest.mark.slow

POOLED = 6  # connections each client holds at once before the restart


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def private(private_server: PrivateRedis) -> PrivateRedis:
    if not private_server.answers():
        private_server.start()
    return private_server


def on(settings: Settings, url: str) -> Settings:
    return dataclasses.replace(settings, redis_url=url)


async def all_at_once(client: aioredis.Redis) -> list[Any]:
    """POOLED commands in flight together: each holds a pooled connection of its own."""
    return await asyncio.gather(*(client.get(f"k{i}") for i in range(POOLED)))


async def test_pooled_connections_dead_after_a_restart_are_retried_on_fresh_ones(
    settings: Settings, private: PrivateRedis
) -> None:
    values = {f"k{i}": str(i).encode() for i in range(POOLED)}
    # What the issue saw: redis-py as from_url builds it (no retry) fails on each.
    plain = build_redis(on(settings, private.url), retry=Retry(NoBackoff(), 0))
    try:
        await plain.mset(values)
        await all_at_once(plain)
        assert (await plain.info("clients"))["connected_clients"] >= POOLED
        private.restart(down_seconds=0)
        failed = await asyncio.gather(*[plain.get(k) for k in values], return_exceptions=True)
        assert all(isinstance(f, redis.exceptions.ConnectionError) for f in failed), failed
    finally:
        await plain.aclose()

    client = build_redis(on(settings, private.url))
    try:
        assert await all_at_once(client) == list(values.values())  # kept across the restart
        private.restart(down_seconds=0)
        # Each of the POOLED connections is dead; each command is sent again, once, on a
        # fresh one: no error, and the gate never heard of an outage.
        assert await all_at_once(client) == list(values.values())
        gate = gate_of(client)
        assert gate is not None and not gate.down
    finally:
        await client.aclose()


async def test_lean_calls_on_a_link_lost_to_a_restart_are_sent_again(
    settings: Settings, private: PrivateRedis
) -> None:
    client = build_redis(on(settings, private.url))
    lean = LeanRedis(RedisAddress.of(client), timeout=REDIS_READ_TIMEOUT, gate=gate_of(client))
    try:
        await lean.command("SET", "lean", "kept")
        private.restart(down_seconds=0)
        # Twenty calls go out on the dead link together; each is retried on one new link.
        answers = await asyncio.gather(*(lean.command("GET", "lean") for _ in range(20)))
        assert answers == [b"kept"] * 20
        gate = gate_of(client)
        assert gate is not None and not gate.down
    finally:
        await lean.close()
        await client.aclose()


async def test_a_fanout_pipeline_failing_while_redis_is_down_is_released(
    settings: Settings, private: PrivateRedis
) -> None:
    """`ERROR asyncio: Unclosed Pipeline client` during an outage: a pipeline with scripts
    kept its connection checked out when its scripts' check (SCRIPT EXISTS) failed, until
    garbage collection found it. And once Redis is back, the gate lets the writes through
    again."""
    client = build_redis(on(settings, private.url))
    writer = TimelineWriter(client, cap=800)
    timeline = keys.timeline(1)

    def batch(post_id: int) -> list[tuple[int, bytes, list[int], frozenset[int]]]:
        return [(post_id, b"{}", [1, 2, 3], frozenset())]

    try:
        await client.zadd(timeline, {keys.timeline_member(0): 0})  # built: writes go in
        await writer.add_many(batch(101), own=[(9, 101)])
        private.stop()
        try:
            await writer.add_many(batch(102), own=[(9, 102)])
        except REDIS_ERRORS:
            pass
        else:
            raise AssertionError("Redis is stopped: the write cannot have succeeded")
        assert not client.connection_pool._in_use_connections  # all back in the pool

        private.start()
        deadline = time.monotonic() + MAX_BACKOFF + REDIS_CONNECT_TIMEOUT + 5
        while True:  # refused at once until the next probe finds Redis back
            try:
                await writer.add_many(batch(102), own=[(9, 102)])
                break
            except REDIS_ERRORS:
                assert time.monotonic() < deadline, "Redis is back, the writes are not"
                await asyncio.sleep(0.05)
        members = await client.zrange(timeline, 0, -1)
        assert [keys.timeline_member(p) for p in (0, 101, 102)] == sorted(members)
    finally:
        await client.aclose()


# -- the API server -------------------------------------------------------------------


async def timeline_reads(api: Client) -> dict[str, float]:
    text = await (await api.get("/metrics")).text()
    found = re.findall(r'^feed_timeline_reads_total\{source="(\w+)"\} (\S+)$', text, re.M)
    return {source: float(count) for source, count in found}


async def feed(api: Client, user: User) -> list[str]:
    resp = await api.get("/v1/feed", headers=user.auth)
    assert resp.status == 200, await resp.text()
    return [p["id"] for p in (await resp.json())["posts"]]


async def readers_of_one_author(api: Client, readers: int) -> tuple[list[User], list[str]]:
    """Readers who follow an author of three posts, each timeline built (read twice)."""
    author = await sign_up(api)
    users = [await sign_up(api) for _ in range(readers)]
    for user in users:
        await follow(api, user, author)
    posts = [await post(api, author, f"post {i}") for i in range(3)]
    for user in users:
        for _ in range(2):
            assert await feed(api, user) == posts[::-1]
    return users, posts[::-1]


async def test_after_a_redis_restart_the_server_reads_from_redis_at_once(
    settings: Settings,
    private: PrivateRedis,
    aiohttp_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The restart as the server meets it when no FIN reached it (a restarted host or
    container, a NAT that forgot): its pooled redis-py connections and its lean link look
    open, and each fails on first use. (A request's arrival lets the event loop read any
    FIN first, so a restart of the private Redis alone would not show it.) The restart
    blocks the loop: nothing else of the server asks Redis while it is down, which would
    rightly trip the gate for a moment (the black-hole test's subject, not this one's)."""
    async with BlackHole("127.0.0.1", private.port) as hole:
        api = await aiohttp_client(serve_api(on(settings, hole.url)))
        (reader,), expected = await readers_of_one_author(api, 1)
        before = await timeline_reads(api)
        hole.forget()
        private.restart(down_seconds=0)
        caplog.clear()
        for _ in range(3):
            assert await feed(api, reader) == expected
        # Through redis-py (the post cache's MGET) too.
        resp = await api.get(f"/v1/posts/{expected[0]}", headers=reader.auth)
        assert resp.status == 200 and (await resp.json())["id"] == expected[0]
        after = await timeline_reads(api)
    assert after["redis"] - before["redis"] == 3
    assert after.get("postgres", 0) == before.get("postgres", 0) == 0
    trouble = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in trouble if "Redis" in m], trouble


# While Redis is silent a page asks it once: its page script on the lean link (open
# since the warm-up; this hole would accept a new one at once), which gives up after
# REDIS_READ_TIMEOUT. That timeout trips the gate: the rest of the page comes from
# Postgres without asking Redis again, and later calls are refused at once. So a page
# waits one REDIS_READ_TIMEOUT however many pages wait together. MARGIN covers the
# Postgres fallback of the burst on a shared 2-core machine, and stays below
# REDIS_READ_TIMEOUT so that a second Redis deadline in any page fails the test. (Before:
# two lean deadlines and a redis-py socket_timeout per page, ~9 s here; against a host
# that drops SYNs, the k-th page queued behind the lean link's connect waited k x 2 s.)
# No page of the burst refreshes the pull-tier list (which asks Redis through redis-py):
# the warm-up's reads read it less than CELEB_CACHE_SECONDS before.
MARGIN = 1.5
PAGE_BOUND = REDIS_READ_TIMEOUT + MARGIN
BURST = 32
SILENCE = 10.0
# After forwarding resumes: a probe sent while silent runs out (REDIS_CONNECT_TIMEOUT +
# REDIS_SOCKET_TIMEOUT at most), the back-off passes (MAX_BACKOFF at most), the next
# probe is answered (its lean connect and answer: 2 x REDIS_READ_TIMEOUT at most).
RECOVERY_BOUND = REDIS_CONNECT_TIMEOUT + REDIS_SOCKET_TIMEOUT + MAX_BACKOFF + 2 * REDIS_READ_TIMEOUT


async def test_a_black_holed_redis_costs_each_feed_read_one_deadline_at_most(
    settings: Settings,
    private: PrivateRedis,
    aiohttp_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with BlackHole("127.0.0.1", private.port) as hole:
        api = await aiohttp_client(serve_api(on(settings, hole.url)))
        readers, expected = await readers_of_one_author(api, 4)
        before = await timeline_reads(api)

        async def timed(user: User) -> float:
            began = time.monotonic()
            assert await feed(api, user) == expected  # from Postgres, same page
            return time.monotonic() - began

        caplog.set_level(logging.INFO, logger="core.redis_gate")
        hole.silent = True
        silenced = time.monotonic()
        waits = await asyncio.gather(*(timed(readers[i % 4]) for i in range(BURST)))
        assert max(waits) <= PAGE_BOUND, sorted(waits)
        during = await timeline_reads(api)
        assert during["postgres"] - before.get("postgres", 0) == BURST
        assert during["redis"] == before["redis"]
        await asyncio.sleep(silenced + SILENCE - time.monotonic())

        hole.silent = False
        resumed = time.monotonic()
        while (await timeline_reads(api))["redis"] == before["redis"]:
            assert time.monotonic() - resumed < RECOVERY_BOUND, "Redis is back, reads are not"
            assert await feed(api, readers[0]) == expected
            await asyncio.sleep(0.1)
        recovered = await timeline_reads(api)
        for user in readers:  # all from Redis again
            assert await feed(api, user) == expected
        after = await timeline_reads(api)
        assert after["redis"] - recovered["redis"] == len(readers)
        assert after["postgres"] == recovered["postgres"]

    gate_lines = [r.getMessage() for r in caplog.records if r.name == "core.redis_gate"]
    assert len([line for line in gate_lines if "unreachable" in line]) == 1, gate_lines
    assert any("answers again" in line for line in gate_lines), gate_lines
