"""Home timelines in Redis: one ZSET per user, all scores 0, members fixed-width decimal
post ids (exact 64-bit order, idempotent re-adds; see core/keys.py).

A timeline that exists is complete: it holds a sentinel member (id 0) from the moment it
is built, so "key missing" always means "rebuild from Postgres", never "empty".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from core import keys
from core.lean_redis import Arg, LeanRedis, LeanScript

SENTINEL = keys.timeline_member(0)

# KEYS[1] timeline; ARGV[1] cap; ARGV[2..] members. Adds only to a built timeline (a
# missing one is rebuilt on read), then trims to the cap (sentinel counted, harmlessly).
ADD_IF_BUILT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
return 1
"""


async def add_if_built(client: aioredis.Redis, user_id: int, post_ids: list[int], cap: int) -> None:
    members = [keys.timeline_member(p) for p in post_ids]
    await client.eval(ADD_IF_BUILT, 1, keys.timeline(user_id), cap, *members)


async def build(client: aioredis.Redis, user_id: int, post_ids: list[int], cap: int) -> None:
    """Replace the timeline with `post_ids` (newest first). The sentinel marks it complete
    only when Postgres had no more than `cap` posts (callers pass up to cap + 1 ids)."""
    key = keys.timeline(user_id)
    mapping = {keys.timeline_member(p): 0 for p in post_ids[:cap]}
    if len(post_ids) <= cap:
        mapping[SENTINEL] = 0
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.zadd(key, mapping)
    await pipe.execute()


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[int]  # newest first, real post ids only
    # A short page: whether it ends the timeline's history (the timeline is complete),
    # or older posts are in Postgres only. Callers need not look at it for a full page.
    complete: bool


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The first page of a feed read, and what the rest of the read needs to know."""

    page: Page | None  # None: the timeline is missing (rebuild it)
    followed: list[int] | None  # the given authors the user follows; None: cache missing


@dataclass(frozen=True, slots=True)
class ReadyPage:
    """A whole feed page, merged and filtered by the page script: its posts' ids and
    checked counters (core/post_cache.py); the bodies are the server's to add."""

    counters: list[bytes]
    ids: list[int]
    has_more: bool


def _script(name: str) -> LeanScript:
    text = (LUA_DIR / f"{name}.lua").read_text()
    for marker, value in {
        "@WIDTH@": str(keys.TIMELINE_ID_WIDTH),
        "@SENTINEL@": SENTINEL.decode(),
        "@COUNTS@": keys.post_counters(0)[:-1],
    }.items():
        text = text.replace(marker, value)
    return LeanScript(text)


LUA_DIR = Path(__file__).with_name("lua")
FEED_PAGE_SCRIPT = _script("feed_page")


def page_call(
    user_id: int, before: int | None, limit: int, authors: list[int], held: list[bytes] | None
) -> tuple[list[Arg], list[Arg]]:
    """The page script's keys and arguments (read_page)."""
    upper = b"+" if before is None else b"(" + keys.timeline_member(before)
    return (
        [keys.timeline(user_id), keys.following(user_id)],
        [user_id, upper, limit, len(authors), *authors, *(held or ())],
    )


async def read_page(
    client: LeanRedis,
    user_id: int,
    before: int | None,
    limit: int,
    authors: list[int],
    held: list[bytes] | None,
) -> ReadyPage | FirstRead:
    """The page below `before` in one round trip when the caches allow (ReadyPage); else
    the timeline's first `limit` + 1 entries below `before` and which of `authors` (the
    pull-tier authors) the user follows, for the general path. `held`: the posts
    of `authors` held by this process (Celebrities.held); None when there are too many
    authors to send (the general path merges them then)."""
    found = await client.run(FEED_PAGE_SCRIPT, *page_call(user_id, before, limit, authors, held))
    if found[0] == 1:
        _, counters, members, has_more = found
        return ReadyPage(counters, list(map(keys.post_id_from_member, members)), bool(has_more))
    _, exists, sentinel, members, cached, flags = found
    page = None
    if exists:
        ids = [keys.post_id_from_member(m) for m in members if m != SENTINEL]
        page = Page(ids, complete=bool(sentinel))
    followed = [a for a, f in zip(authors, flags, strict=True) if f] if cached else None
    return FirstRead(page, followed)


async def page(client: aioredis.Redis, user_id: int, before: int | None, count: int) -> Page | None:
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
    ids = [keys.post_id_from_member(m) for m in members if m != SENTINEL]
    return Page(ids, complete=sentinel is not None)


async def newer(client: aioredis.Redis, user_id: int, since: int, count: int) -> list[int] | None:
    """Up to `count` ids newer than `since`, newest first; None if missing."""
    key = keys.timeline(user_id)
    pipe = client.pipeline(transaction=False)
    pipe.exists(key)
    pipe.zrange(
        key, b"+", b"(" + keys.timeline_member(since), desc=True, bylex=True, offset=0, num=count
    )
    exists, members = await pipe.execute()
    if not exists:
        return None
    return [keys.post_id_from_member(m) for m in members]
