"""What the machine itself can do, measured in the same run as the benchmark for context:
Redis GET throughput (redis-benchmark), Postgres round trips (asyncpg `SELECT 1`), and
the same server's `/healthz` under the same load generator (the HTTP stack's floor).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import asyncpg

from scripts.bench import cpu
from scripts.bench.loadgen import Plan, run_load
from scripts.bench.progress import note
from scripts.bench.report import Row, summarize
from scripts.bench.server_proc import RunningServer

HEALTHZ_SECONDS = 10.0
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


@dataclass(frozen=True, slots=True)
class Ceiling:
    redis_get_p16: float | None
    redis_get_p1: float | None
    pg_one: float
    pg_eight: float
    healthz: Row | None

    def lines(self) -> list[str]:
        def rate(value: float | None) -> str:
            return "n/a" if value is None else f"{value:,.0f}/s"

        out = [
            f"- Redis GET (redis-benchmark, 50 clients): {rate(self.redis_get_p16)} "
            f"pipelined x16, {rate(self.redis_get_p1)} unpipelined",
            f"- Postgres `SELECT 1` (asyncpg): {self.pg_one:,.0f}/s on one connection, "
            f"{self.pg_eight:,.0f}/s over 8 connections",
        ]
        if self.healthz is not None:
            h = self.healthz
            out.append(
                f"- the same server's `GET /healthz` (no Redis/Postgres work) at "
                f"{h.offered:,.0f} req/s: p50 {h.p50:.1f} ms, p99 {h.p99:.1f} ms, "
                f"max {h.max:.1f} ms, server CPU {h.cpu['server']:.0f}%, "
                f"client CPU {h.cpu['loadgen']:.0f}%"
            )
        return out


def measure_ceiling(
    args: argparse.Namespace, db_url: str, redis_port: int, server: RunningServer, rate: float
) -> Ceiling:
    cpu.wait_quiet(args.quiet_below, args.quiet_wait)
    note("ceiling: redis-benchmark")
    p16 = redis_get_rate(redis_port, 16)
    p1 = redis_get_rate(redis_port, 1)
    note("ceiling: asyncpg SELECT 1")
    pg_one = asyncio.run(pg_select1_rate(db_url, 1))
    pg_eight = asyncio.run(pg_select1_rate(db_url, 8))
    note(f"ceiling: /healthz at {rate:,.0f} req/s for {HEALTHZ_SECONDS:.0f} s")
    plan = Plan(
        base_url=server.base_url,
        path="/healthz",
        tokens=["-"],
        rate=rate,
        warmup=2.0,
        duration=HEALTHZ_SECONDS,
        connections=args.connections,
    )
    result, spent = run_load(args, plan, server.pids)
    return Ceiling(p16, p1, pg_one, pg_eight, summarize("/healthz", result, spent))
