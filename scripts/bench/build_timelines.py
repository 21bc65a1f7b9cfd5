"""Builds every user's home timeline in Redis from what Postgres holds, as fan-out would
have left it: posts of followed push-tier authors plus the user's own, newest `cap`, in
the layout of server/feed/timeline_reads.py (all scores 0, 19-digit members, sentinel id 0
when the timeline holds the whole history). Celebrity-tier authors (more followers than
the throttle threshold) are left out: readers merge them at read time.

The Redis db is flushed first, so it must be one used by the benchmark only.
"""

from __future__ import annotations

import heapq
import itertools

import asyncpg
import redis.asyncio as aioredis

from core import keys
from scripts.bench.progress import Progress, note

SENTINEL = keys.timeline_member(0)  # server/feed/timeline_reads.py: "this timeline is complete"
USERS_PER_PIPELINE = 200
# One argument per timeline (the members concatenated, fixed width) instead of two per
# entry: packing ~15 million arguments in redis-py took most of the build time. The
# resulting ZSET is the same as fan-out's ZADDs would leave.
REPLACE_FROM_BLOB = f"""
local width = {keys.TIMELINE_ID_WIDTH}
local blob = ARGV[1]
local args = {{}}
for i = 1, #blob, width do
  args[#args + 1] = 0
  args[#args + 1] = string.sub(blob, i, i + width - 1)
end
redis.call('DEL', KEYS[1])
if #args > 0 then redis.call('ZADD', KEYS[1], unpack(args)) end
return #args / 2
"""


async def _load_graph(
    url: str, throttle_max: int
) -> tuple[list[int], dict[int, list[int]], dict[int, list[int]], set[int]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        users = await conn.fetch("SELECT id, follower_count, fanout_tier FROM users ORDER BY id")
        follows = await conn.fetch(
            "SELECT follower_id, array_agg(followee_id) AS f FROM follows GROUP BY follower_id"
        )
        posts = await conn.fetch(
            "SELECT author_id, array_agg(id ORDER BY id) AS p FROM posts "
            "WHERE deleted_at IS NULL GROUP BY author_id"
        )
    finally:
        await conn.close()
    # Same rule as server/feed/home.py Celebrities: an override wins, else the count.
    pull = {
        r["id"]
        for r in users
        if r["fanout_tier"] == "pull"
        or (r["fanout_tier"] is None and r["follower_count"] > throttle_max)
    }
    following = {r["follower_id"]: list(r["f"]) for r in follows}
    by_author = {r["author_id"]: list(r["p"]) for r in posts}
    return [r["id"] for r in users], following, by_author, pull


def timeline_members(
    user: int,
    following: dict[int, list[int]],
    by_author: dict[int, list[int]],
    pull: set[int],
    member_of: dict[int, bytes],
    cap: int,
) -> list[bytes]:
    authors = [a for a in following.get(user, []) if a not in pull] + [user]
    newest = heapq.nlargest(
        cap + 1, itertools.chain.from_iterable(by_author.get(a, []) for a in authors)
    )
    members = [member_of[p] for p in newest[:cap]]
    if len(newest) <= cap:
        members.append(SENTINEL)
    return members


async def build_timelines(db_url: str, redis_url: str, throttle_max: int, cap: int) -> None:
    note("timelines: loading follows and posts from Postgres")
    users, following, by_author, pull = await _load_graph(db_url, throttle_max)
    note(f"timelines: {len(pull)} celebrity-tier authors (followers > {throttle_max}) left out")
    # Encoded once per post rather than once per timeline entry (~80 entries per post).
    member_of = {p: keys.timeline_member(p) for ids in by_author.values() for p in ids}
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
        replace = client.register_script(REPLACE_FROM_BLOB)
        progress = Progress("timelines", len(users), " users")
        entries = 0
        for start in range(0, len(users), USERS_PER_PIPELINE):
            pipe = client.pipeline(transaction=False)
            batch = users[start : start + USERS_PER_PIPELINE]
            for user in batch:
                members = timeline_members(user, following, by_author, pull, member_of, cap)
                entries += len(members)
                await replace(keys=[keys.timeline(user)], args=[b"".join(members)], client=pipe)
            await pipe.execute()
            progress.add(len(batch))
        elapsed = progress.finish()
        note(f"timelines: {entries:,} entries written in {elapsed:.1f} s")
    finally:
        await client.aclose()
