"""Seeds the fan-out benchmark's database and (re)builds its followers' home timelines.

Users: one big author followed by every user of a pool (`Shape.followers`), and
`Shape.authors` normal authors with `Shape.per_author` followers each, drawn from the same
pool. Everyone is active (last_active_at = now), so every follow is a timeline write.
Postgres is loaded with COPY once and kept across runs (the shape is stored next to it);
timelines are rebuilt on every run, so each run starts from the same Redis state.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core import keys
from core.ids import IdGenerator
from core.migrate import migrate
from scripts.bench.fanout_common import USER_WORKER_ID, Shape, Target
from scripts.bench.progress import Progress, note
from scripts.bench.seed import copy_chunked, ensure_database

TIMELINES_PER_CALL = 5_000
CELEBRITY_HANDLE = "fo_celeb"
AUTHOR_PREFIX = "fo_a"
FOLLOWER_PREFIX = "fo_f"
SENTINEL = keys.timeline_member(0)  # what tests/fanout/test_fanout_workers.py uses, too
SHAPE_TABLE = "fanout_bench_shape"  # only in the bench database, never a migration

# One call per few thousand timelines instead of two commands each from Python: an empty
# timeline holding only the sentinel is what a user who just had it rebuilt would have.
RESET_TIMELINES = """
for i = 1, #KEYS do
  redis.call('UNLINK', KEYS[i])
  redis.call('ZADD', KEYS[i], 0, ARGV[1])
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Dataset:
    shape: Shape
    celebrity: int
    authors: list[int]
    pool: list[int]  # every follower of the celebrity, ascending
    fresh: bool  # just (re)loaded: new user ids, so every earlier timeline is an orphan


async def _stored_shape(conn: asyncpg.Connection) -> Shape | None:
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SHAPE_TABLE} (name text PRIMARY KEY, value bigint NOT NULL)"
    )
    rows = await conn.fetch(f"SELECT name, value FROM {SHAPE_TABLE}")
    if not rows:
        return None
    try:
        return Shape(**{r["name"]: int(r["value"]) for r in rows})
    except TypeError:  # written by another version of this script
        return None


def _user_ids(shape: Shape) -> tuple[int, list[int], list[int]]:
    ids = IdGenerator(USER_WORKER_ID)
    celebrity = ids.next_id()
    authors = [ids.next_id() for _ in range(shape.authors)]
    pool = [ids.next_id() for _ in range(shape.followers)]
    return celebrity, authors, pool


def _follows(
    shape: Shape, celebrity: int, authors: list[int], pool: list[int]
) -> list[tuple[int, int]]:
    rng = random.Random(shape.seed)  # noqa: S311 - a reproducible graph, not a secret
    rows: list[tuple[int, int]] = [(f, celebrity) for f in pool]
    for author in authors:
        rows.extend((f, author) for f in rng.sample(pool, shape.per_author))
    return rows


def _users(
    celebrity: int, authors: list[int], pool: list[int], follows: list[tuple[int, int]]
) -> list[tuple[Any, ...]]:
    followers = Counter(followee for _, followee in follows)
    following = Counter(follower for follower, _ in follows)
    handles = [(celebrity, CELEBRITY_HANDLE)]
    handles += [(a, f"{AUTHOR_PREFIX}{n}") for n, a in enumerate(authors)]
    handles += [(u, f"{FOLLOWER_PREFIX}{n}") for n, u in enumerate(pool)]
    return [(u, h, "x", followers[u], following[u]) for u, h in handles]


async def _load(conn: asyncpg.Connection, shape: Shape) -> None:
    celebrity, authors, pool = _user_ids(shape)
    follows = _follows(shape, celebrity, authors, pool)
    users = _users(celebrity, authors, pool, follows)
    async with conn.transaction():
        await conn.execute("TRUNCATE users, follows, posts CASCADE")
        await conn.execute(f"DELETE FROM {SHAPE_TABLE}")
        columns = ["id", "handle", "password_hash", "follower_count", "following_count"]
        await copy_chunked(conn, "users", columns, users)
        await copy_chunked(conn, "follows", ["follower_id", "followee_id"], follows)
        await conn.executemany(f"INSERT INTO {SHAPE_TABLE} VALUES ($1, $2)", shape.as_rows())
    # Fresh statistics, so the follower query plans like it would on a live database.
    await conn.execute("ANALYZE users, follows")


async def _refresh_activity(conn: asyncpg.Connection) -> None:
    """Every seeded user must count as active (FANOUT_ACTIVE_DAYS) whenever the bench
    runs; only rows older than a day are touched, so a rerun writes nothing."""
    status = await conn.execute(
        "UPDATE users SET last_active_at = now() WHERE last_active_at < now() - interval '1 day'"
    )
    if status != "UPDATE 0":
        note(f"seed: refreshed last_active_at ({status})")
        await conn.execute("VACUUM ANALYZE users")


async def _dataset(conn: asyncpg.Connection, shape: Shape, fresh: bool) -> Dataset:
    async def ids(pattern: str) -> list[int]:
        rows = await conn.fetch("SELECT id FROM users WHERE handle LIKE $1 ORDER BY id", pattern)
        return [r["id"] for r in rows]

    celebrity = await conn.fetchval("SELECT id FROM users WHERE handle = $1", CELEBRITY_HANDLE)
    authors = await ids(AUTHOR_PREFIX.replace("_", "\\_") + "%")
    pool = await ids(FOLLOWER_PREFIX.replace("_", "\\_") + "%")
    return Dataset(shape, int(celebrity), authors, pool, fresh)


async def seed_postgres(target: Target, shape: Shape, reset: bool) -> Dataset:
    await ensure_database(target.base.database_url, target.db_name, reset)
    conn = await asyncpg.connect(target.database_url, timeout=10)
    try:
        await migrate(conn)
        fresh = await _stored_shape(conn) != shape
        if fresh:
            note(f"seed: loading {shape} into {target.db_name}")
            await _load(conn, shape)
        else:
            note(f"seed: database {target.db_name} already holds {shape} (--reset to redo)")
        await _refresh_activity(conn)
        return await _dataset(conn, shape, fresh)
    finally:
        await conn.close()


async def _drop_leftovers(client: aioredis.Redis | RedisCluster) -> None:
    """Checkpoints of a fan-out killed in an earlier run would make a new post resume
    half-way; they are keyed by post id, so they only matter for replays, but a clean
    db keeps runs comparable."""
    stale = [k async for k in client.scan_iter(match=keys.fanout_checkpoint(0)[:-1] + "*")]
    if stale:
        await client.unlink(*stale)


async def build_timelines(client: aioredis.Redis | RedisCluster, data: Dataset) -> None:
    """Every follower gets a timeline holding only the sentinel (so fan-out writes into
    it), replacing whatever an earlier run left there. The Redis db is the benchmark's
    own (fanout_common.Target refuses the others): after a reseed it is emptied, since
    the timelines of the old user ids would only take memory."""
    if data.fresh:
        await client.flushdb()
        note("seed: emptied the benchmark's Redis db (new user ids)")
    await _drop_leftovers(client)
    users = data.pool
    script = client.register_script(RESET_TIMELINES)
    progress = Progress("seed: timelines", len(users), " timelines")
    for start in range(0, len(users), TIMELINES_PER_CALL):
        chunk = users[start : start + TIMELINES_PER_CALL]
        if isinstance(client, RedisCluster):  # keys of many slots: one call per key
            pipe = client.pipeline()
            for user in chunk:
                # execute_command: the cluster pipeline's own unlink() is a coroutine
                # that splits keys by slot, and would run outside the pipeline.
                pipe.execute_command("UNLINK", keys.timeline(user))
                pipe.zadd(keys.timeline(user), {SENTINEL: 0})
            await pipe.execute()
        else:
            await script(keys=[keys.timeline(u) for u in chunk], args=[SENTINEL])
        progress.add(len(chunk))
    progress.finish()
