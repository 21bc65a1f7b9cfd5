"""Home timelines in Redis (keys.timeline): their shape and rules, owned here alone.
The API server and fan-out read and write `tl:{user}` only through this module and its
scripts (core/lua/timeline_*.lua). It never decides who gets a post (fan-out does) and
never merges a feed (server/feed/home.py does).

- One ZSET per user, every score 0, members fixed-width decimal post ids
  (keys.timeline_member): exact 64-bit order, and re-adding a post is a no-op.
- A timeline that exists has been built from Postgres (`build`): a missing key means
  "rebuild when read", never "empty". So writes go only to timelines that exist (Redis
  keeps no empty ZSET: existing means holding at least one member); writing into a
  missing one would make a partial timeline look built.
- The sentinel (member of id 0) says "nothing older than this timeline's oldest post":
  `build` adds it when Postgres had no more than `cap` posts. Being the lowest member,
  it is the first one a trim cuts, and older history then continues in Postgres.
- The cap (settings.timeline_cap, 800) bounds a timeline, the sentinel counted. Fan-out's
  batch script lets one grow to cap + slack (settings.timeline_trim_slack) and then cuts
  it back to the cap: one trim per `slack` writes instead of one per write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core import keys
from core.lua_files import read_lua

SENTINEL = keys.timeline_member(0)
LUA_DIR = Path(__file__).with_name("lua")
# For scripts that read timelines: the member width and the sentinel, by their markers.
LUA_MARKERS = {"@WIDTH@": str(keys.TIMELINE_ID_WIDTH), "@SENTINEL@": SENTINEL.decode()}
# The scripts (core/lua/<name>.lua); their arguments are described in each file.
ADD = "timeline_add"  # one post into a batch of followers' timelines, published live
REMOVE = "timeline_remove"  # one post out of a batch of timelines, deletes sent live
ADD_POSTS = "timeline_add_posts"  # posts into one timeline

Client = aioredis.Redis | RedisCluster


def script(name: str) -> str:
    return read_lua(LUA_DIR, name, LUA_MARKERS)


ADD_POSTS_SCRIPT = script(ADD_POSTS)


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[int]  # newest first, real post ids only
    # A short page: whether it ends the timeline's history (the timeline is complete),
    # or older posts are in Postgres only. Callers need not look at it for a full page.
    complete: bool


async def build(client: Client, user_id: int, post_ids: list[int], cap: int) -> None:
    """Fill a missing timeline with `post_ids` (newest first). The sentinel marks it
    complete only when Postgres had no more than `cap` posts (callers pass up to cap + 1
    ids).

    Merged into whatever the key holds by then, never replacing it: between the caller's
    read of Postgres and this write, a concurrent build of the same timeline may have
    finished and fan-out may have written newer posts into it; replacing would drop them.
    (Posts fan-out skipped because the timeline did not exist yet are the caller's to
    add once it does: see server/feed/home.py, HomeFeed._rebuild.)"""
    mapping = {keys.timeline_member(p): 0 for p in post_ids[:cap]}
    if len(post_ids) <= cap:
        mapping[SENTINEL] = 0
    await client.zadd(keys.timeline(user_id), mapping)


async def drop(client: Client, user_id: int) -> None:
    """Forget the timeline: the next read rebuilds it from Postgres."""
    await client.delete(keys.timeline(user_id))


async def add_posts(client: Client, user_id: int, post_ids: list[int], cap: int) -> int:
    """Adds the posts to the timeline if it exists, trimmed to `cap`; returns how many
    were new. (Fan-out pipelines the same script: fanout/writer.py.)"""
    if not post_ids:
        return 0
    members = [keys.timeline_member(p) for p in post_ids]
    added = await client.eval(ADD_POSTS_SCRIPT, 1, keys.timeline(user_id), cap, *members)
    return int(added)


async def remove_posts(client: Client, user_id: int, post_ids: list[int]) -> int:
    if not post_ids:
        return 0
    members = [keys.timeline_member(p) for p in post_ids]
    return int(await client.zrem(keys.timeline(user_id), *members))


async def page(client: Client, user_id: int, before: int | None, count: int) -> Page | None:
    """Up to `count` ids older than `before`, newest first; None if the timeline is missing."""
    key = keys.timeline(user_id)
    upper = b"+" if before is None else b"(" + keys.timeline_member(before)
    pipe = client.pipeline(transaction=False)
    pipe.zscore(key, SENTINEL)
    pipe.exists(key)
    pipe.zrange(key, upper, b"-", desc=True, bylex=True, offset=0, num=count)
    sentinel, exists, members = await pipe.execute()
    if not exists:
        return None
    return Page(real_ids(members), complete=sentinel is not None)


def real_ids(members: list[bytes]) -> list[int]:
    """The post ids of timeline members, the sentinel left out."""
    return [keys.post_id_from_member(m) for m in members if m != SENTINEL]
