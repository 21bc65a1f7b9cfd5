"""What each layer under fan-out can do alone on this machine, measured in the same run:

- raw ZADD throughput of the Redis server (redis-benchmark, pipelined), three variants;
- the follower query alone (fanout.followers.follower_batches against Postgres);
- the timeline writer alone (fanout.writer.TimelineWriter, i.e. the real Lua script
  with the real argument packing, no Postgres, no Kafka).

The worker's end-to-end numbers are then read against these.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core import events, keys
from core.ids import IdGenerator
from fanout.followers import follower_batches
from fanout.writer import TimelineWriter
from scripts.bench.common import BenchError
from scripts.bench.fanout_common import POST_WORKER_ID, Target
from scripts.bench.fanout_redis import RedisTime, command_stats, delta
from scripts.bench.fanout_seed import RESET_TIMELINES, SENTINEL
from scripts.bench.progress import Progress, note

_RPS = re.compile(r"([\d.]+) requests per second")
CEILING_KEY_PREFIX = "fo:ceil:"
DEFAULT_ZSET_KEY = "myzset"  # what redis-benchmark -t zadd writes to
PIPELINE = 64
CLIENTS = 50
CREATE_CHUNK = 5_000
FILL_CHUNK = 200
# Timelines at the cap, the steady state of an active user: at 800 entries a ZSET is a
# skiplist (above zset-max-listpack-entries), not a listpack. ARGV[i]: entries of KEYS[i].
FILL_TO_CAP = f"""
for i = 1, #KEYS do
  redis.call('UNLINK', KEYS[i])
  local args = {{}}
  for j = 1, tonumber(ARGV[i]) do
    args[#args + 1] = 0
    args[#args + 1] = string.format('%0{keys.TIMELINE_ID_WIDTH}d', j)
  end
  redis.call('ZADD', KEYS[i], unpack(args))
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class ZaddCeiling:
    label: str
    command: str  # exactly what was run, for the report
    per_second: float


@dataclass(frozen=True, slots=True)
class LayerRate:
    label: str
    items: int
    seconds: float
    redis: RedisTime | None = None

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def _redis_benchmark(target: Target, requests: int, extra: list[str]) -> tuple[str, float]:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise BenchError("redis-benchmark not found (apt-get install -y redis-tools)")
    # On a cluster redis-benchmark learns the slot map from the node and sends each key
    # to its node; the cluster has db 0 only.
    where = ("--cluster",) if target.cluster_url else ("--dbnum", str(target.redis_db))
    command = [
        exe,
        *("-h", target.redis_host, "-p", str(target.redis_port)),
        *where,
        *("-n", str(requests)),
        *("-P", str(PIPELINE), "-c", str(CLIENTS), "-q"),
        *extra,
    ]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"redis-benchmark failed: {exc.stderr.strip()[-300:]}") from None
    # -q prints progress with carriage returns; the last match is the final figure.
    rates = _RPS.findall(out.replace("\r", "\n"))
    if not rates:
        raise BenchError(f"cannot parse redis-benchmark output: {out[-300:]!r}")
    shown = " ".join(c if " " not in c and "{" not in c else f"'{c}'" for c in command[1:])
    return f"redis-benchmark {shown}", float(rates[-1])


def _ceiling_key(n: int) -> str:
    # redis-benchmark replaces __rand_int__ by a 12-digit zero-padded number.
    return f"{CEILING_KEY_PREFIX}{{{n:012d}}}"


async def _create_ceiling_keys(client: aioredis.Redis, count: int) -> None:
    script = client.register_script(RESET_TIMELINES)
    for start in range(0, count, CREATE_CHUNK):
        names = [_ceiling_key(n) for n in range(start, min(count, start + CREATE_CHUNK))]
        await script(keys=names, args=[SENTINEL])


async def _drop_ceiling_keys(client: aioredis.Redis, count: int) -> None:
    await client.unlink(DEFAULT_ZSET_KEY)
    for start in range(0, count, CREATE_CHUNK):
        names = [_ceiling_key(n) for n in range(start, min(count, start + CREATE_CHUNK))]
        await client.unlink(*names)


async def zadd_ceilings(
    client: aioredis.Redis | RedisCluster, target: Target, requests: int, keyspace: int
) -> list[ZaddCeiling]:
    """Three ways to ask Redis for ZADDs, from least to most like a timeline write. On a
    cluster the first two only, with one key per node: redis-benchmark sends a custom
    command's keys to the node it is connected to, which answers MOVED."""
    note(f"ceiling: redis-benchmark, {requests:,} ZADDs per variant")
    if isinstance(client, RedisCluster):
        found = await _cluster_ceilings(client, target, requests, keyspace)
    else:
        found = await _single_ceilings(client, target, requests, keyspace)
    for c in found:
        note(f"ceiling: {c.label}: {c.per_second:,.0f}/s")
    return found


async def _cluster_ceilings(
    client: RedisCluster, target: Target, requests: int, keyspace: int
) -> list[ZaddCeiling]:
    found: list[ZaddCeiling] = []
    for extra, label in (
        (["-t", "zadd"], "ZADD, one key per node, same member (`-t zadd --cluster`)"),
        (["-r", str(keyspace), "-t", "zadd"], "ZADD, one key per node, new members"),
    ):
        command, rate = _redis_benchmark(target, requests, extra)
        found.append(ZaddCeiling(label, command, rate))
        await client.flushdb()  # every primary: the per-node keys it wrote
    return found


async def _single_ceilings(
    client: aioredis.Redis, target: Target, requests: int, keyspace: int
) -> list[ZaddCeiling]:
    found: list[ZaddCeiling] = []
    try:
        await client.unlink(DEFAULT_ZSET_KEY)
        command, rate = _redis_benchmark(target, requests, ["-t", "zadd"])
        found.append(ZaddCeiling("ZADD, one key, same member (`-t zadd`)", command, rate))
        await client.unlink(DEFAULT_ZSET_KEY)
        command, rate = _redis_benchmark(target, requests, ["-r", str(keyspace), "-t", "zadd"])
        found.append(ZaddCeiling("ZADD, one key, new members (`-t zadd -r`)", command, rate))
        await _create_ceiling_keys(client, keyspace)
        pattern = f"{CEILING_KEY_PREFIX}{{__rand_int__}}"
        command, rate = _redis_benchmark(
            target, requests, ["-r", str(keyspace), "zadd", pattern, "0", "__rand_int__"]
        )
        label = f"ZADD new member into {keyspace:,} existing ZSETs"
        found.append(ZaddCeiling(label, command, rate))
    finally:
        await _drop_ceiling_keys(client, keyspace)
    return found


async def follower_query_rate(
    db: asyncpg.Pool, author: int, batch_size: int, active_days: int, passes: int = 2
) -> LayerRate:
    """Streams every active follower of `author` exactly as fan-out does. The last pass
    is kept: the worker reads the same, by then cached, pages."""
    result = LayerRate("follower query", 0, 0.0)
    for n in range(passes):
        started, rows = time.monotonic(), 0
        async for batch in follower_batches(db, author, 0, batch_size, active_days):
            rows += len(batch.ids)
        result = LayerRate("follower query", rows, time.monotonic() - started)
        note(f"ceiling: follower query pass {n + 1}: {result.per_second:,.0f} rows/s")
    return result


def live_payload() -> bytes:
    """A live event the size of a real one (the script receives it once per call)."""
    post: dict[str, Any] = {
        "id": "1",
        "author": {"id": "1", "handle": "fo_celeb", "display_name": ""},
        "text": "x" * 140,
        "created_at": "2025-01-01T00:00:00.000Z",
        "reply_to": None,
        "repost_of": None,
        "media_ids": [],
        "counts": {"likes": 0, "reposts": 0, "replies": 0},
    }
    return events.live_post(post)


async def writer_rate(
    client: aioredis.Redis | RedisCluster,
    followers: list[int],
    batch_size: int,
    cap: int,
    posts: int,
    slack: int = 0,
) -> LayerRate:
    """TimelineWriter.add over every follower, `posts` times, batch by batch as the
    worker calls it (one script call per batch, sequentially). Writes fake post ids:
    the caller rebuilds the timelines afterwards."""
    writer = TimelineWriter(client, cap, slack)
    ids = IdGenerator(POST_WORKER_ID)
    payload = live_payload()
    progress = Progress("ceiling: TimelineWriter.add", posts * len(followers), " writes")
    before = await command_stats(client)
    started, written = time.monotonic(), 0
    for _ in range(posts):
        post_id = ids.next_id()
        for start in range(0, len(followers), batch_size):
            result = await writer.add(post_id, payload, followers[start : start + batch_size])
            written += result.written
            progress.add(result.written)
    elapsed = time.monotonic() - started
    progress.finish()
    spent = delta(before, await command_stats(client))
    if written != posts * len(followers):
        raise BenchError(f"TimelineWriter wrote {written}, expected {posts * len(followers)}")
    return LayerRate("TimelineWriter.add", written, elapsed, spent)


async def _fill_to_cap(client: aioredis.Redis, users: list[int], cap: int, slack: int) -> None:
    """Steady state: a full timeline holds between cap and cap + slack entries (fan-out
    trims back to the cap when it reaches cap + slack), spread evenly, so each write has
    the steady-state chance of paying for a trim."""
    script = client.register_script(FILL_TO_CAP)
    for start in range(0, len(users), FILL_CHUNK):
        chunk = users[start : start + FILL_CHUNK]
        sizes = [cap + u % (slack + 1) for u in chunk]
        await script(keys=[keys.timeline(u) for u in chunk], args=sizes)


async def writer_rate_at_cap(
    client: aioredis.Redis, count: int, batch_size: int, cap: int, slack: int, posts: int
) -> LayerRate:
    """TimelineWriter.add into `count` throwaway full timelines (user ids 1..count:
    seeded users have snowflake ids, far above)."""
    users = list(range(1, count + 1))
    note(f"ceiling: filling {count:,} throwaway timelines to the cap ({cap} + up to {slack})")
    await _fill_to_cap(client, users, cap, slack)
    try:
        rate = await writer_rate(client, users, batch_size, cap, posts, slack)
    finally:
        for start in range(0, count, CREATE_CHUNK):
            await client.unlink(*[keys.timeline(u) for u in users[start : start + CREATE_CHUNK]])
    return LayerRate(
        f"TimelineWriter.add, timelines at the cap ({cap})", rate.items, rate.seconds, rate.redis
    )
