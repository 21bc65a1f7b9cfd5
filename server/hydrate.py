"""Turns post ids into API post objects: post bodies from the Redis cache (one MGET,
misses from Postgres, then cached) plus counters (cached separately, so a like never
invalidates a post body or anyone's timeline). Redis down: everything from Postgres.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from core import keys
from core.lean_redis import LeanRedis, LeanScript
from core.postview import counts, fetch_rows, iso, post_body

__all__ = ["REDIS_ERRORS", "Hydrator", "bump_counter", "forget_post", "iso", "spliced"]

log = logging.getLogger(__name__)

POST_TTL = 24 * 3600
COUNTER_TTL = 3600
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


COUNTER_NAMES = ("likes", "reposts", "replies")

# A post's counters are one string, "likes,reposts,replies", so that bodies and counters
# of a whole page come in one MGET: inside a script each redis.call costs ~3 us here,
# and one GET plus one HMGET per post made hydration the largest share of Redis's time
# per feed page.


def encode_counts(likes: int, reposts: int, replies: int) -> bytes:
    return b"%d,%d,%d" % (likes, reposts, replies)


COUNTS_JSON = b',"counts":{"likes":%s,"reposts":%s,"replies":%s}}'


def _count_parts(counters: bytes) -> list[bytes] | None:
    """The three decimal counts of a cached counters value; None when it is not ours
    (the caller reads the post from Postgres instead)."""
    parts = counters.split(b",")
    if len(parts) != 3 or not all(p.lstrip(b"-").isdigit() for p in parts):
        return None
    return parts


def with_counts(body: bytes, counters: bytes) -> bytes | None:
    """A cached body (a JSON object) with its counts spliced in, without parsing either;
    None when the counters are not ours."""
    return None if _count_parts(counters) is None else spliced(body, counters)


def spliced(body: bytes, counters: bytes) -> bytes:
    """with_counts for counters already checked to be ours (server/lua/feed_page.lua)."""
    return body[:-1] + COUNTS_JSON % tuple(counters.split(b","))


def decode_counts(counters: bytes) -> dict[str, int] | None:
    """The counts of a cached counters value; None when it is not ours."""
    parts = _count_parts(counters)
    return None if parts is None else dict(zip(COUNTER_NAMES, map(int, parts), strict=True))


# A reader's home feed page: KEYS n post bodies, the same n posts' counters, then the
# reader's following set (keys.following); ARGV[1] the reader's id. Returns the n bodies
# and n counters (false when missing), then per post whether the reader follows its
# author (or is the author): 1 yes, 0 no, -1 cannot tell here (no cached body, or no
# cached following set). The author id is read from the cached body, which
# core.postview.post_body writes as {"id":"..","author":{"id":"..", first.
READ_VISIBLE = """
local n = (#KEYS - 1) / 2
local following = KEYS[#KEYS]
local out = redis.call('MGET', unpack(KEYS, 1, 2 * n))
local cached = redis.call('EXISTS', following) == 1
local authors, at = {}, {}
for i = 1, n do
  local body = out[i]
  local flag = -1
  if body and cached then
    local author = string.match(body, '^{"id":"%d+","author":{"id":"(%d+)"')
    if author == ARGV[1] then
      flag = 1
    elseif author then
      authors[#authors + 1] = author
      at[#authors] = 2 * n + i
      flag = 0
    end
  end
  out[2 * n + i] = flag
end
if #authors > 0 then
  local followed = redis.call('SMISMEMBER', following, unpack(authors))
  for j = 1, #authors do out[at[j]] = followed[j] end
end
return out
"""


READ_VISIBLE_SCRIPT = LeanScript(READ_VISIBLE)


class Hydrator:
    def __init__(self, db: asyncpg.Pool, redis_client: aioredis.Redis) -> None:
        self._db = db
        self._redis = redis_client

    async def posts(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Live (not deleted) posts by id; unknown and deleted ids are simply absent."""
        if not ids:
            return {}
        try:
            return await self._from_cache(ids)
        except REDIS_ERRORS as exc:
            log.warning("hydrating from Postgres, Redis unavailable: %s", exc)
            rows = await fetch_rows(self._db, ids)
            return {
                r["id"]: {**post_body(r), "counts": counts(r)}
                for r in rows
                if r["deleted_at"] is None
            }

    async def for_reader(
        self, lean: LeanRedis, reader: int, ids: list[int]
    ) -> tuple[dict[int, bytes], dict[int, int], dict[int, int]]:
        """For `reader`'s home feed: the JSON of each live post by id, counts included
        (spliced into the cached bytes, nothing parsed), whether `reader` follows each
        post's author (1 yes, 0 no), and, for posts Redis could not tell about, their
        author (the caller asks Postgres). `lean` is the feed's script client
        (core/lean_redis.py). Raises REDIS_ERRORS: the caller falls back to Postgres as a
        whole."""
        if not ids:
            return {}, {}, {}
        names = [keys.post_cache(i) for i in ids] + [keys.post_counters(i) for i in ids]
        names.append(keys.following(reader))
        found = await lean.run(READ_VISIBLE_SCRIPT, names, [reader])
        n = len(ids)
        posts: dict[int, bytes] = {}
        flags: dict[int, int] = {}
        unsure: dict[int, int] = {}
        missing: list[int] = []
        for post_id, raw, counter, flag in zip(
            ids, found[:n], found[n : 2 * n], found[2 * n :], strict=True
        ):
            if raw == b"-":  # tombstone: deleted
                continue
            data = with_counts(raw, counter) if raw is not None and counter is not None else None
            if data is None:
                missing.append(post_id)
                continue
            posts[post_id] = data
            if flag == -1:
                unsure[post_id] = int(orjson.loads(raw)["author"]["id"])
            else:
                flags[post_id] = flag
        if missing:
            filled: dict[int, dict[str, Any]] = {}
            await self._fill(missing, filled)
            for post_id, post in filled.items():
                posts[post_id] = orjson.dumps(post)
                unsure[post_id] = int(post["author"]["id"])
        return posts, flags, unsure

    async def _from_cache(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        names = [keys.post_cache(i) for i in ids] + [keys.post_counters(i) for i in ids]
        found = await self._redis.mget(names)
        return await self._decode(ids, found[: len(ids)], found[len(ids) :])

    async def _decode(
        self, ids: list[int], bodies: list[Any], counters: list[Any]
    ) -> dict[int, dict[str, Any]]:
        """Cached bodies and counters into posts; what the cache misses comes from Postgres
        (and is cached)."""
        result: dict[int, dict[str, Any]] = {}
        missing: set[int] = set()
        for post_id, raw, counter in zip(ids, bodies, counters, strict=True):
            if raw == b"-":  # tombstone: deleted
                continue
            counts_now = decode_counts(counter) if raw is not None and counter is not None else None
            if counts_now is None:
                missing.add(post_id)
                continue
            post = orjson.loads(raw)
            post["counts"] = counts_now
            result[post_id] = post
        if missing:
            await self._fill(sorted(missing), result)
        return result

    async def _fill(self, ids: list[int], result: dict[int, dict[str, Any]]) -> None:
        rows = await fetch_rows(self._db, ids)
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            if row["deleted_at"] is not None:
                pipe.set(keys.post_cache(row["id"]), b"-", ex=POST_TTL)
                continue
            body = post_body(row)
            pipe.set(keys.post_cache(row["id"]), orjson.dumps(body), ex=POST_TTL)
            pipe.set(keys.post_counters(row["id"]), encode_counts(**counts(row)), ex=COUNTER_TTL)
            result[row["id"]] = {**body, "counts": counts(row)}
        await pipe.execute()


# Adjusts a cached counter only when it is cached (a counter made up here would be
# wrong); Postgres is the truth and the TTL heals any drift. KEYS[1] counters;
# ARGV[1] which (1 likes, 2 reposts, 3 replies), ARGV[2] by how much.
BUMP_COUNTER = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local c = {string.match(raw, '^(%-?%d+),(%-?%d+),(%-?%d+)$')}
if #c ~= 3 then
  redis.call('DEL', KEYS[1])  -- not ours: the next read caches it from Postgres
  return false
end
local i = tonumber(ARGV[1])
c[i] = tonumber(c[i]) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], c[1] .. ',' .. c[2] .. ',' .. c[3], 'KEEPTTL')
return c[i]
"""


async def bump_counter(redis_client: aioredis.Redis, post_id: int, name: str, by: int) -> None:
    try:
        which = COUNTER_NAMES.index(name) + 1
        await redis_client.eval(BUMP_COUNTER, 1, keys.post_counters(post_id), which, by)
    except REDIS_ERRORS as exc:
        log.warning("counter of post %d not updated in Redis: %s", post_id, exc)


async def forget_post(redis_client: aioredis.Redis, post_id: int) -> None:
    try:
        await redis_client.set(keys.post_cache(post_id), b"-", ex=POST_TTL)
    except REDIS_ERRORS as exc:
        log.warning("post %d not tombstoned in Redis: %s", post_id, exc)
