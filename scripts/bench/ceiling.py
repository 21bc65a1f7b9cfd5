"""What the machine itself can do, measured next to the benchmark for context: Redis GET
throughput (redis-benchmark) and Postgres round trips (asyncpg `SELECT 1`)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import asyncpg

_RPS = re.compile(r"GET: ([\d.]+) requests per second")


def redis_get_rate(port: int, pipeline: int, clients: int = 50) -> float | None:
    """GETs per second; None when redis-benchmark is not installed."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    command = [exe, "-p", str(port), "-n", "200000", "-P", str(pipeline), "-c", str(clients)]
    out = subprocess.run(
        [*command, "-q", "-t", "get"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    match = _RPS.search(out.replace("\r", "\n"))
    return float(match.group(1)) if match else None


async def _select_loop(pool: asyncpg.Pool, until: float) -> int:
    done = 0
    async with pool.acquire() as conn:
        while time.monotonic() < until:
            await conn.fetchval("SELECT 1")
            done += 1
    return done


async def pg_select1_rate(url: str, connections: int, seconds: float = 2.0) -> float:
    """`SELECT 1` per second over `connections` connections, each one query at a time."""
    async with asyncpg.create_pool(url, min_size=connections, max_size=connections) as pool:
        started = time.monotonic()
        counts = await asyncio.gather(
            *(_select_loop(pool, started + seconds) for _ in range(connections))
        )
        return sum(counts) / (time.monotonic() - started)
