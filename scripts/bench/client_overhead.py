"""CPU per round trip of the client libraries the API server uses, on this machine.

    .venv/bin/python -m scripts.bench.client_overhead [--calls 20000]

The feed read costs the server about 1 ms of CPU, and most of it is round trips to Redis
and Postgres. This measures what one round trip costs the *calling* process (user +
system CPU of this process, not wall time), sequentially on one connection, so the
feed-read numbers can be read against the machine's and the libraries' floor:

- redis-py (asyncio, hiredis parser) as the services build it (core.clients.build_redis:
  pool, 5 s socket timeout, health checks), then redis-py's Connection used directly
  with and without a socket timeout, then a bare asyncio.Protocol + hiredis.Reader (the
  floor: one write() and one read per call);
- asyncpg `SELECT 1` through a pool (no reset query, as core.clients configures it) and
  on a bare connection.

Prints a markdown table. Needs the local stack (`make setup`).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
import hiredis
import uvloop
from redis.asyncio.connection import Connection, parse_url

from core.clients import build_redis
from core.settings import Settings
from scripts.bench.progress import note


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """(µs of this process's CPU, µs of wall time) per call."""
    for _ in range(200):  # warm-up: connections open, caches hot
        await call()
    cpu, wall = _cpu(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (_cpu() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


class _BareRedis(asyncio.Protocol):
    """The floor: pack, one write(), parse with hiredis, resolve a future."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._waiting.popleft().set_result(reply)

    def call(self, *args: str | bytes) -> asyncio.Future[Any]:
        assert self._transport is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(hiredis.pack_command(cast(Any, args)))  # stub wants a 1-tuple
        return future


async def _redis_rows(settings: Settings, calls: int) -> list[tuple[str, float, float]]:
    rows = []
    client = build_redis(settings)
    try:
        rows.append(
            ("redis-py client as the services use it, PING", *await _measure(client.ping, calls))
        )
    finally:
        await client.aclose()
    url = parse_url(settings.redis_url)
    for timeout in (5.0, None):
        options: dict[str, Any] = {**url, "socket_timeout": timeout}
        conn = Connection(**options)
        await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py

        async def ping(conn: Connection = conn) -> Any:
            await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
            return await conn.read_response()

        label = f"redis-py Connection direct, socket_timeout={timeout}, PING"
        rows.append((label, *await _measure(ping, calls)))
        await conn.disconnect()
    loop = asyncio.get_running_loop()
    transport, bare = await loop.create_connection(
        _BareRedis, url.get("host", "localhost"), url.get("port", 6379)
    )
    try:
        rows.append(
            (
                "bare asyncio.Protocol + hiredis, PING",
                *await _measure(lambda: bare.call("PING"), calls),
            )
        )
    finally:
        transport.close()
    return rows


async def _postgres_rows(settings: Settings, calls: int) -> list[tuple[str, float, float]]:
    async def no_reset(_: asyncpg.Connection) -> None:
        return None

    async with asyncpg.create_pool(
        settings.database_url, min_size=1, max_size=2, reset=no_reset
    ) as pool:
        pooled = await _measure(lambda: pool.fetchval("SELECT 1"), calls)
    conn = await asyncpg.connect(settings.database_url)
    try:
        bare = await _measure(lambda: conn.fetchval("SELECT 1"), calls)
    finally:
        await conn.close()
    return [
        ("asyncpg pool (no reset query), SELECT 1", *pooled),
        ("asyncpg bare connection, SELECT 1", *bare),
    ]


async def _main(calls: int) -> None:
    settings = Settings.from_env()
    note(f"client overhead: {calls:,} sequential calls per client")
    rows = await _redis_rows(settings, calls) + await _postgres_rows(settings, calls)
    print("| client, call | CPU µs per call (this process) | wall µs per call |")
    print("|---|--:|--:|")
    for label, cpu, wall in rows:
        print(f"| {label} | {cpu:.0f} | {wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.run(_main(args.calls))


if __name__ == "__main__":
    main()
