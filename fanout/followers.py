"""Followers of an author, streamed from Postgres by keyset pagination in bounded batches,
so memory stays flat whatever the follower count."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import asyncpg

ACTIVE_FOLLOWERS = """
SELECT f.follower_id FROM follows f JOIN users u ON u.id = f.follower_id
 WHERE f.followee_id = $1 AND f.follower_id > $2
   AND u.last_active_at > now() - make_interval(days => $4)
 ORDER BY f.follower_id LIMIT $3
"""
# Followers of several authors at once, at most $3 each (the caller treats an author who
# reaches it as big: follower_count said otherwise, but it is only a counter).
ACTIVE_FOLLOWERS_OF_MANY = """
SELECT a.id, f.follower_id FROM unnest($1::bigint[]) AS a(id)
 CROSS JOIN LATERAL (
   SELECT f.follower_id FROM follows f JOIN users u ON u.id = f.follower_id
    WHERE f.followee_id = a.id AND u.last_active_at > now() - make_interval(days => $2)
    ORDER BY f.follower_id LIMIT $3) f
"""
ALL_FOLLOWERS = """
SELECT follower_id FROM follows WHERE followee_id = $1 AND follower_id > $2
 ORDER BY follower_id LIMIT $3
"""


async def follower_batches(
    db: asyncpg.Pool, author_id: int, after: int, batch_size: int, active_days: int | None
) -> AsyncGenerator[list[int], None]:
    """Batches of follower ids greater than `after`, ascending. active_days=None: all
    followers (deletes must reach timelines of people who went inactive since)."""
    last = after
    while True:
        if active_days is None:
            rows = await db.fetch(ALL_FOLLOWERS, author_id, last, batch_size)
        else:
            rows = await db.fetch(ACTIVE_FOLLOWERS, author_id, last, batch_size, active_days)
        if not rows:
            return
        batch = [r[0] for r in rows]
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1]


async def followers_of_many(
    db: asyncpg.Pool, authors: list[int], active_days: int, limit: int
) -> dict[int, list[int]]:
    """Active followers of each author, in one query; an author with `limit` or more is
    left out (they go the batched, checkpointed way)."""
    found: dict[int, list[int]] = {a: [] for a in authors}
    for row in await db.fetch(ACTIVE_FOLLOWERS_OF_MANY, authors, active_days, limit):
        found[row[0]].append(row[1])
    return {a: f for a, f in found.items() if len(f) < limit}
