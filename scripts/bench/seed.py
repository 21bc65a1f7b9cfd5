"""Seeds the benchmark database (default `feed_bench`, never the dev `feed`) and builds
every user's Redis home timeline the way fan-out would, in a Redis db of its own. Also the
one way a benchmark creates its database and bulk-loads rows (`ensure_database`,
`copy_chunked`; the fan-out dataset in fanout_seed.py uses them).

    .venv/bin/python -m scripts.bench.seed [--reset] [--users 10000] [--posts 100000]

Postgres is loaded with COPY; counters (followers, following, posts) are set to match the
rows. Without --reset an already seeded database is kept and only timelines are rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import redis

from core.ids import id_datetime
from core.migrate import migrate
from core.settings import Settings
from scripts.bench import common
from scripts.bench.build_timelines import build_timelines
from scripts.bench.graph import Dataset, Shape, generate
from scripts.bench.progress import Progress, note

COPY_CHUNK = 50_000
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Shape()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", default=common.BENCH_DB, help="bench database name")
    p.add_argument("--redis-db", type=int, default=common.BENCH_REDIS_DB)
    p.add_argument("--reset", action="store_true", help="drop and recreate database and timelines")
    p.add_argument("--users", type=int, default=defaults.users)
    p.add_argument("--posts", type=int, default=defaults.posts)
    p.add_argument("--median-following", type=int, default=defaults.median_following)
    p.add_argument("--zipf", type=float, default=defaults.zipf, help="popularity exponent")
    p.add_argument("--days", type=int, default=defaults.days, help="posts span this many days")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--throttle-max",
        type=int,
        default=common.THROTTLE_MAX,
        help="celebrity threshold the timelines are built for (FANOUT_THROTTLE_MAX)",
    )
    p.add_argument("--skip-timelines", action="store_true", help="leave timelines to be rebuilt")
    return p.parse_args(argv)


async def ensure_database(base_url: str, name: str, reset: bool) -> None:
    """Create bench database `name` on `base_url`'s server if missing (dropped first with
    `reset`); refuses the dev and system databases."""
    if not _DB_NAME.match(name):
        raise common.BenchError(f"database name {name!r} must match {_DB_NAME.pattern}")
    common.database_url(base_url, name)  # refuses the dev database names
    conn = await asyncpg.connect(common.maintenance_url(base_url), timeout=10)
    try:
        if reset:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            note(f"seed: dropped database {name}")
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            note(f"seed: created database {name}")
    finally:
        await conn.close()


async def copy_chunked(
    conn: asyncpg.Connection, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """COPY `rows` into `table` in chunks, with progress on stderr."""
    progress = Progress(f"seed: copy {table}", len(rows), " rows")
    for start in range(0, len(rows), COPY_CHUNK):
        chunk = rows[start : start + COPY_CHUNK]
        await conn.copy_records_to_table(table, records=chunk, columns=columns)
        progress.add(len(chunk))
    progress.finish()


def user_rows(data: Dataset, password_hash: str) -> list[tuple[Any, ...]]:
    now = dt.datetime.now(dt.UTC)
    followers, posts = data.follower_counts(), data.post_counts()
    return [
        (
            uid,
            f"bench{rank:05d}",
            f"Bench User {rank}",
            password_hash,
            id_datetime(uid),
            now,
            followers[rank],
            len(data.following[rank]),
            posts[rank],
        )
        for rank, uid in enumerate(data.user_ids)
    ]


def follow_rows(data: Dataset) -> list[tuple[int, int]]:
    ids = data.user_ids
    return [(ids[u], ids[f]) for u, followees in enumerate(data.following) for f in followees]


def post_rows(data: Dataset) -> Iterable[tuple[Any, ...]]:
    ids = data.user_ids
    return [
        (pid, ids[author], text, id_datetime(pid))
        for pid, author, text in zip(data.post_ids, data.post_authors, data.post_texts, strict=True)
    ]


async def load(conn: asyncpg.Connection, data: Dataset) -> None:
    from server.auth import build_hasher  # the server's own parameters, so sign-in works

    password_hash = build_hasher().hash(common.BENCH_PASSWORD)
    user_cols = [
        "id",
        "handle",
        "display_name",
        "password_hash",
        "created_at",
        "last_active_at",
        "follower_count",
        "following_count",
        "post_count",
    ]
    async with conn.transaction():
        await copy_chunked(conn, "users", user_cols, user_rows(data, password_hash))
        await copy_chunked(conn, "follows", ["follower_id", "followee_id"], follow_rows(data))
        posts = list(post_rows(data))
        await copy_chunked(conn, "posts", ["id", "author_id", "text", "created_at"], posts)
    note("seed: ANALYZE")
    await conn.execute("ANALYZE users, follows, posts")


async def seed_postgres(args: argparse.Namespace, url: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        applied = await migrate(conn)
        if applied:
            note(f"seed: applied migrations {', '.join(applied)}")
        existing = await conn.fetchval("SELECT count(*) FROM users")
        if existing:
            note(f"seed: {args.db} already holds {existing:,} users; kept (--reset rebuilds)")
            return
        shape = Shape(
            users=args.users,
            posts=args.posts,
            median_following=args.median_following,
            zipf=args.zipf,
            days=args.days,
            seed=args.seed,
        )
        await load(conn, generate(shape))
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    base = common.base_settings()
    db_url = common.database_url(base.database_url, args.db)
    await ensure_database(base.database_url, args.db, args.reset)
    await seed_postgres(args, db_url)
    if args.skip_timelines:
        note("seed: timelines skipped; the server rebuilds each one on its first read")
        return
    await build_timelines(
        db_url,
        common.redis_url(base.redis_url, args.redis_db),
        args.throttle_max,
        Settings().timeline_cap,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except (common.BenchError, OSError, asyncpg.PostgresError, redis.RedisError) as exc:
        sys.exit(f"seed: error: {exc}")


if __name__ == "__main__":
    main()
