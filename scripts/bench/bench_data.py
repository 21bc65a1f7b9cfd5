"""What the read benchmark needs from the seeded data: its numbers for the report, reader
tokens, and Redis timelines that are really there (or deliberately gone, for a cold run).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from dataclasses import dataclass

import asyncpg
import redis
import redis.asyncio as aioredis

from core import keys
from core.auth import TokenSigner
from core.expiry import spread
from core.settings import Settings
from scripts.bench import common
from scripts.bench.build_timelines import build_timelines
from scripts.bench.progress import note
from server.feed.following import EMPTY_MEMBER, FOLLOWING_TTL


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    users: int
    follows: int
    posts: int
    median_following: float
    max_followers: int
    celebrities: int
    readers_following_celebrities: int

    def line(self, throttle_max: int) -> str:
        return (
            f"{self.users:,} users, {self.follows:,} follows (median following "
            f"{self.median_following:.0f}, max followers {self.max_followers:,}), "
            f"{self.posts:,} posts; {self.celebrities} celebrity-tier authors "
            f"(> {throttle_max:,} followers, merged at read time), followed by "
            f"{self.readers_following_celebrities:,} users"
        )


async def dataset_info(url: str, throttle_max: int) -> tuple[DatasetInfo, list[int]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM follows) AS f,"
            " (SELECT count(*) FROM posts) AS posts,"
            " (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY following_count) FROM users)"
            "   AS med, (SELECT max(follower_count) FROM users) AS top,"
            " (SELECT count(*) FROM users WHERE follower_count > $1) AS celebs,"
            " (SELECT count(DISTINCT f.follower_id) FROM follows f JOIN users u"
            "   ON u.id = f.followee_id WHERE u.follower_count > $1) AS celeb_readers",
            throttle_max,
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
    finally:
        await conn.close()
    assert row is not None
    if not row["users"]:
        raise common.BenchError("the bench database is empty: run scripts.bench.seed first")
    info = DatasetInfo(
        row["users"],
        row["f"],
        row["posts"],
        row["med"],
        row["top"],
        row["celebs"],
        row["celeb_readers"],
    )
    return info, ids


def mint_tokens(user_ids: list[int], sample: int) -> list[str]:
    """Tokens for `sample` random seeded users (signed like sign-in would, no round trip)."""
    chosen = user_ids if not sample else random.Random(3).sample(user_ids, sample)  # noqa: S311
    signer = TokenSigner(common.BENCH_SECRET, 24 * 3600)
    return [signer.issue(uid) for uid in chosen]


@dataclass(frozen=True, slots=True)
class Target:
    """The bench data the server reads."""

    db_url: str
    redis_url: str
    user_ids: list[int]


def prepare_redis(args: argparse.Namespace, target: Target, cold: bool) -> None:
    """Cold: empty the bench Redis db. Warm: make sure every timeline is there (a restart
    of the shared Redis, which keeps nothing on disk, silently turns a warm run cold)."""
    with redis.Redis.from_url(target.redis_url) as client:
        if cold:
            client.flushdb()
            note(f"feed: flushed {target.redis_url} (cold start)")
            return
        rng = random.Random(5)  # noqa: S311 - a sample to check, not security
        sample = rng.sample(target.user_ids, min(200, len(target.user_ids)))
        present = client.exists(*(keys.timeline(u) for u in sample))
        # The following cache lives an hour (server/feed/following.py): a warm run needs it
        # filled, or most of its reads pay for the fill instead of the read.
        cached = client.exists(*(keys.following(u) for u in sample))
    if present < len(sample):
        note(f"feed: only {present}/{len(sample)} sampled timelines in Redis; rebuilding them")
        cap = Settings().timeline_cap
        asyncio.run(build_timelines(target.db_url, target.redis_url, args.throttle_max, cap))
    if cached < len(sample):
        note(f"feed: only {cached}/{len(sample)} sampled following sets in Redis; filling them")
        asyncio.run(fill_following(target.db_url, target.redis_url))


async def fill_following(db_url: str, redis_url: str) -> None:
    """Every user's following cache, as the server's first read would fill it."""
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT u.id, coalesce(array_agg(f.followee_id) FILTER (WHERE f.followee_id"
            " IS NOT NULL), '{}') AS f FROM users u LEFT JOIN follows f ON f.follower_id = u.id"
            " GROUP BY u.id"
        )
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        for start in range(0, len(rows), 500):
            pipe = client.pipeline(transaction=False)
            for row in rows[start : start + 500]:
                key = keys.following(row["id"])
                pipe.delete(key)
                pipe.sadd(key, EMPTY_MEMBER, *map(str, row["f"]))
                pipe.expire(key, spread(FOLLOWING_TTL))
            await pipe.execute()
    finally:
        await client.aclose()
