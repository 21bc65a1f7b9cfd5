"""Redis restarted under live traffic, the whole system as `make run` runs it: every
WebSocket client is told to resume (4010: its node's pub/sub link dropped) and comes
back with ?since=; none misses a post or gets one twice, whatever order the replay,
fan-out and the returning caches take, and the timelines are still there afterwards
(the stack's Redis keeps an append-only file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from core import keys
from core.settings import Settings
from tests.support.live_traffic import live_traffic, supervised_system

CLIENTS = 200
DOWN_SECONDS = 6.0


async def timeline_sizes(url: str, users: list[int]) -> list[int]:
    client = aioredis.Redis.from_url(url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcard(keys.timeline(user))
            return list(await pipe.execute())
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_redis_restart_under_live_traffic_loses_nothing_and_repeats_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    with supervised_system(settings, tmp_path) as running:
        async with live_traffic(running, CLIENTS) as traffic:
            await traffic.feeds()  # read once: their timelines live in Redis from now on
            await traffic.posts_made(3)
            users = [int(user.id) for user in traffic.users]
            before = await timeline_sizes(running.redis.url, users)
            assert all(before), "followers' timelines were never built"
            await asyncio.to_thread(running.redis.restart, DOWN_SECONDS)
            after = await timeline_sizes(running.redis.url, users)
            assert all(a >= b for a, b in zip(after, before, strict=True)), (
                "timelines lost in the restart"
            )
            await traffic.posts_made(5)  # posting goes on after the restart
            await traffic.stop_and_check()
            told_to_resume = sum(f.closes[4010] for f in traffic.followers)
            assert told_to_resume >= CLIENTS, "the restart never reached the live clients"
