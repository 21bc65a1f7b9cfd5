"""Followers of an author, streamed from Postgres by keyset pagination in bounded batches,
so memory stays flat whatever the follower count. Pages are read through a Reader: the
read replica when there is one (core/replica.py), as fresh as the primary."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from core.replica import Reader

# Whether a follower has a push device comes with the page (an index probe per row):
# the timeline script then only reports offline followers who can be pushed to.
_HAS_DEVICE = "EXISTS (SELECT 1 FROM devices d WHERE d.user_id = f.follower_id AND d.enabled)"
ACTIVE_FOLLOWERS = f"""
SELECT f.follower_id, {_HAS_DEVICE} FROM follows f JOIN users u ON u.id = f.follower_id
 WHERE f.followee_id = $1 AND f.follower_id > $2
   AND u.last_active_at > now() - make_interval(days => $4)
 ORDER BY f.follower_id LIMIT $3
"""
# Followers of several authors at once, at most $3 each (the caller treats an author who
# reaches it as big: follower_count said otherwise, but it is only a counter).
ACTIVE_FOLLOWERS_OF_MANY = f"""
SELECT a.id, f.follower_id, f.has_device FROM unnest($1::bigint[]) AS a(id)
 CROSS JOIN LATERAL (
   SELECT f.follower_id, {_HAS_DEVICE} AS has_device
     FROM follows f JOIN users u ON u.id = f.follower_id
    WHERE f.followee_id = a.id AND u.last_active_at > now() - make_interval(days => $2)
    ORDER BY f.follower_id LIMIT $3) f
"""
ALL_FOLLOWERS = """
SELECT follower_id FROM follows WHERE followee_id = $1 AND follower_id > $2
 ORDER BY follower_id LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Followers:
    ids: list[int]  # ascending
    with_device: frozenset[int]  # those of them with an enabled push device

    @classmethod
    def of_rows(cls, rows: Sequence[Any]) -> Followers:  # (follower_id, has_device) rows
        return cls([r[0] for r in rows], frozenset(r[0] for r in rows if r[1]))


async def follower_batches(
    db: Reader, author_id: int, after: int, batch_size: int, active_days: int
) -> AsyncGenerator[Followers, None]:
    """Batches of active followers with ids greater than `after`, ascending."""
    last = after
    while True:
        rows = await db.fetch(ACTIVE_FOLLOWERS, author_id, last, batch_size, active_days)
        if not rows:
            return
        yield Followers.of_rows(rows)
        if len(rows) < batch_size:
            return
        last = rows[-1][0]


async def all_follower_batches(
    db: Reader, author_id: int, batch_size: int
) -> AsyncGenerator[list[int], None]:
    """Every follower, active or not (a delete must reach the timelines of people who
    went inactive since), in ascending batches."""
    last = 0
    while True:
        batch = [r[0] for r in await db.fetch(ALL_FOLLOWERS, author_id, last, batch_size)]
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1]


async def followers_of_many(
    db: Reader, authors: list[int], active_days: int, limit: int
) -> dict[int, Followers]:
    """Active followers of each author, in one query; an author with `limit` or more is
    left out (they go the batched, checkpointed way)."""
    found: dict[int, list[tuple[int, bool]]] = {a: [] for a in authors}
    for row in await db.fetch(ACTIVE_FOLLOWERS_OF_MANY, authors, active_days, limit):
        found[row[0]].append((row[1], row[2]))
    return {a: Followers.of_rows(f) for a, f in found.items() if len(f) < limit}
