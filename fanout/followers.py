"""Followers of an author, streamed from Postgres by keyset pagination in bounded batches,
so memory stays flat whatever the follower count."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

ACTIVE_FOLLOWERS = """
SELECT f.follower_id FROM follows f JOIN users u ON u.id = f.follower_id
 WHERE f.followee_id = $1 AND f.follower_id > $2
   AND u.last_active_at > now() - make_interval(days => $4)
 ORDER BY f.follower_id LIMIT $3
"""
ALL_FOLLOWERS = """
SELECT follower_id FROM follows WHERE followee_id = $1 AND follower_id > $2
 ORDER BY follower_id LIMIT $3
"""


async def follower_batches(
    db: asyncpg.Pool, author_id: int, after: int, batch_size: int, active_days: int | None
) -> AsyncIterator[list[int]]:
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
