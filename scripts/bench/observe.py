"""What happened around a measured window besides our requests: did the shared Redis
restart (it keeps nothing on disk, so every timeline is gone), and where did the server
read timelines from (cache hits and misses, pages finished by the general path)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis
import redis.asyncio as aioredis

from core import stats


def redis_run_id(url: str) -> str:
    """Changes whenever the Redis process restarts."""
    with redis.Redis.from_url(url) as client:
        return str(client.info("server")["run_id"])


def redis_pid(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return int(client.info("server")["process_id"])


def server_reads(redis_url: str) -> dict[str, Counter[str]]:
    """Per server process (its stats node), its feed reads so far: timeline cache hits
    and misses, and pages the one-call script handed to the general path. From the
    snapshots each process writes to Redis every second (server/stats.py): /metrics on a
    port shared by several processes answers for one of them only."""
    return {
        snapshot["node"]: Counter(
            {
                "cache hits": snapshot.get("timeline_cache_hits_total", 0),
                "cache misses": snapshot.get("timeline_cache_misses_total", 0),
                "general path": snapshot.get("feed_pages_general_total", 0),
            }
        )
        for snapshot in asyncio.run(_snapshots(redis_url, "server"))
    }


async def _snapshots(redis_url: str, service: str) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await stats.read_all(client, service)
    finally:
        await client.aclose()


def reads_between(before: dict[str, Counter[str]], after: dict[str, Counter[str]]) -> Counter[str]:
    """What the processes seen at both ends read in between (up to a second of lag)."""
    total: Counter[str] = Counter()
    for node, counts in after.items():
        total.update(counts - before.get(node, Counter()))
    return total


def redis_commands(url: str) -> int:
    """Commands the Redis server has processed since it started, from every client: a
    window where it ran far more than our load needs means someone else was using it."""
    with redis.Redis.from_url(url) as client:
        return int(client.info("stats")["total_commands_processed"])
