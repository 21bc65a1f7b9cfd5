"""Turns post ids into API post objects: post bodies from the Redis cache (one MGET,
misses from Postgres, then cached) plus counters (cached separately, so a like never
invalidates a post body or anyone's timeline). Redis down: everything from Postgres.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson
import redis.exceptions

from core import keys
from core.clients import AnyRedis, mget_any
from core.expiry import spread
from core.lean_redis import LeanClient, LeanScript
from core.lua_files import read_lua
from core.post_cache import (
    COUNTER_NAMES,
    COUNTER_TTL,
    POST_TTL,
    TOMBSTONE,
    counter_parts,
    encode_counters,
    queue_tombstone,
    tombstone,
)
from core.postview import counts, fetch_rows, iso, post_body
from core.recent import Recent

__all__ = ["REDIS_ERRORS", "Hydrator", "bump_counter", "forget_post", "iso", "spliced"]

log = logging.getLogger(__name__)

# Redis unreachable, or (on a cluster) a slot without a master or redirections that do
# not settle: the caller serves from Postgres instead.
REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
)

# A post's counters are one string, "author,likes,reposts,replies" (core/post_cache.py),
# so that a feed page learns who wrote each post, whether it still exists and its counts
# from one MGET of short values: inside a script each redis.call costs ~3 us here, and
# every byte read there is copied into a Lua string.

COUNTS_JSON = b',"counts":{"likes":%s,"reposts":%s,"replies":%s}}'


def with_counts(body: bytes, counters: bytes) -> bytes | None:
    """A cached body (a JSON object) with its counts spliced in, without parsing either;
    None when the counters are not ours."""
    return None if counter_parts(counters) is None else spliced(body, counters)


def spliced(body: bytes, counters: bytes) -> bytes:
    """with_counts for counters already checked to be ours (server/feed/lua/feed_page.lua)."""
    counts = counters.partition(b",")[2]
    tail = _counts_json.get(counts)
    if tail is None:
        if len(_counts_json) >= COUNTS_JSON_HELD:
            _counts_json.clear()
        tail = _counts_json[counts] = COUNTS_JSON % tuple(counts.split(b","))
    return body[:-1] + tail


# The counts' JSON by their cached form ("likes,reposts,replies"): most posts share a few
# small counts (0,0,0 above all), and formatting them per post cost ~4 us per 20-post
# page. Cleared when full: the common ones are back after a page or two.
COUNTS_JSON_HELD = 4096
_counts_json: dict[bytes, bytes] = {}


def decode_counts(counters: bytes) -> dict[str, int] | None:
    """The counts of a cached counters value; None when it is not ours."""
    parts = counter_parts(counters)
    return None if parts is None else dict(zip(COUNTER_NAMES, map(int, parts[1:]), strict=True))


LUA_DIR = Path(__file__).with_name("lua")
READ_VISIBLE = read_lua(LUA_DIR, "read_visible")
READ_VISIBLE_SCRIPT = LeanScript(READ_VISIBLE)


class Hydrator:
    def __init__(
        self,
        db: asyncpg.Pool,
        redis_client: AnyRedis,
        media_base: str,
        held: Recent[int, bytes] | None = None,
    ) -> None:
        self._db = db
        self._redis = redis_client
        self._media_base = media_base  # core/object_store.media_base_url
        self._held: Recent[int, bytes] = Recent(0) if held is None else held

    async def posts(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Live (not deleted) posts by id; unknown and deleted ids are simply absent."""
        if not ids:
            return {}
        try:
            return await self._from_cache(ids)
        except REDIS_ERRORS as exc:
            log.warning("hydrating from Postgres, Redis unavailable: %s", exc)
            return await self.from_postgres(ids)

    async def from_postgres(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """As posts(), without asking Redis (a caller that just found it unavailable)."""
        rows = await fetch_rows(self._db, ids, self._media_base)
        return {
            r["id"]: {**post_body(r), "counts": counts(r)} for r in rows if r["deleted_at"] is None
        }

    async def spliced_page(
        self, lean: LeanClient, ids: list[int], counters: list[bytes]
    ) -> tuple[list[bytes], list[int]]:
        """The JSON of a page's posts whose counters the page script has checked, and
        their ids: bodies held by this process, else from Redis, else from Postgres. A
        post deleted meanwhile is left out."""
        held = list(map(self._held.get, ids))
        if None not in held:  # the common case, kept to one pass
            return list(map(spliced, cast(list[bytes], held), counters)), ids
        found = await self.bodies(lean, ids)
        posts: list[bytes] = []
        kept: list[int] = []
        for post_id, counter in zip(ids, counters, strict=True):
            body = found.get(post_id)
            if body is not None:
                posts.append(spliced(body, counter))
                kept.append(post_id)
        return posts, kept

    async def bodies(self, lean: LeanClient, ids: list[int]) -> dict[int, bytes]:
        """The cached bodies (JSON without counts) of the live posts among `ids`: held by
        this process, else read from Redis (one MGET), else from Postgres (then cached in
        both)."""
        held = self._held
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for post_id in ids:
            body = held.get(post_id)
            if body is None:
                missing.append(post_id)
            else:
                found[post_id] = body
        if not missing:
            return found
        raw = await lean.mget([keys.post_cache(i) for i in missing])
        unknown: list[int] = []
        for post_id, body in zip(missing, raw, strict=True):
            if body is None:
                unknown.append(post_id)
            elif body != TOMBSTONE:
                found[post_id] = body
                held.put(post_id, body)
        if unknown:
            for post_id, (body, _) in (await self._fill(unknown)).items():
                found[post_id] = body
        return found

    async def for_reader(
        self, lean: LeanClient, reader: int, ids: list[int]
    ) -> tuple[dict[int, bytes], dict[int, int], dict[int, int]]:
        """For `reader`'s home feed: the JSON of each live post by id, counts included
        (spliced into the cached bytes, nothing parsed), whether `reader` follows each
        post's author (1 yes, 0 no), and, for posts Redis could not tell about, their
        author (the caller asks Postgres). `lean` is the feed's script client
        (core/lean_redis.py). Raises REDIS_ERRORS: the caller falls back to Postgres as a
        whole."""
        if not ids:
            return {}, {}, {}
        names = [keys.post_counters(i) for i in ids]
        if lean.cluster:
            found = await _read_visible_split(lean, reader, names)
        else:
            names.append(keys.following(reader))
            found = await lean.run(READ_VISIBLE_SCRIPT, names, [reader])
        n = len(ids)
        live: dict[int, bytes] = {}  # counters, checked
        flags: dict[int, int] = {}
        unsure: dict[int, int] = {}
        missing: list[int] = []
        for post_id, counter, flag in zip(ids, found[:n], found[n:], strict=True):
            if counter == TOMBSTONE:  # deleted
                continue
            parts = None if counter is None else counter_parts(counter)
            if parts is None:
                missing.append(post_id)
                continue
            live[post_id] = counter
            if flag == -1:
                unsure[post_id] = int(parts[0])
            else:
                flags[post_id] = flag
        bodies = await self.bodies(lean, list(live))
        posts = {i: spliced(bodies[i], c) for i, c in live.items() if i in bodies}
        if missing:
            for post_id, (body, post_counts) in (await self._fill(missing)).items():
                posts[post_id] = spliced(body, post_counts)
                unsure[post_id] = int(post_counts.split(b",", 1)[0])
        return posts, flags, unsure

    async def _from_cache(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        names = [keys.post_cache(i) for i in ids] + [keys.post_counters(i) for i in ids]
        found = await mget_any(self._redis, names)
        return await self._decode(ids, found[: len(ids)], found[len(ids) :])

    async def _decode(
        self, ids: list[int], bodies: list[Any], counters: list[Any]
    ) -> dict[int, dict[str, Any]]:
        """Cached bodies and counters into posts; what the cache misses comes from Postgres
        (and is cached)."""
        result: dict[int, dict[str, Any]] = {}
        missing: list[int] = []
        for post_id, raw, counter in zip(ids, bodies, counters, strict=True):
            if raw == TOMBSTONE or counter == TOMBSTONE:  # deleted
                continue
            counts_now = decode_counts(counter) if raw is not None and counter is not None else None
            if counts_now is None:
                missing.append(post_id)
                continue
            post = orjson.loads(raw)
            post["counts"] = counts_now
            result[post_id] = post
        if missing:
            for post_id, (body, post_counts) in (await self._fill(missing)).items():
                post = orjson.loads(body)
                post["counts"] = decode_counts(post_counts)
                result[post_id] = post
        return result

    async def _fill(self, ids: list[int]) -> dict[int, tuple[bytes, bytes]]:
        """The body and counters of the live posts among `ids`, read from Postgres and
        cached (a deleted post's tombstones, too)."""
        rows = await fetch_rows(self._db, ids, self._media_base)
        pipe = self._redis.pipeline(transaction=False)
        filled: dict[int, tuple[bytes, bytes]] = {}
        for row in rows:
            post_id = row["id"]
            if row["deleted_at"] is not None:
                queue_tombstone(pipe, post_id)
                continue
            body = orjson.dumps(post_body(row))
            post_counts = encode_counters(row["author_id"], **counts(row))
            pipe.set(keys.post_cache(post_id), body, ex=spread(POST_TTL))
            pipe.set(keys.post_counters(post_id), post_counts, ex=spread(COUNTER_TTL))
            self._held.put(post_id, body)
            filled[post_id] = (body, post_counts)
        await pipe.execute()
        return filled


async def _read_visible_split(lean: LeanClient, reader: int, names: list[str]) -> list[Any]:
    """server/feed/lua/read_visible.lua's answer on a cluster, where the posts' counters
    live on every node: read with one call per node, then the authors looked up in the
    reader's following set with one SMISMEMBER on the reader's node."""
    found: list[Any] = await lean.mget(names)
    n = len(names)
    flags = [-1] * n
    own = b"%d" % reader
    authors: list[bytes] = []
    at: list[int] = []
    for i, counters in enumerate(found):
        author = None if counters is None else counters.partition(b",")[0]
        if author == own:
            flags[i] = 1
        elif author and author.isdigit():
            authors.append(author)
            at.append(i)
    if authors:
        # "0" first: the set always holds it once cached (server/feed/following.py).
        cached, *followed = await lean.command("SMISMEMBER", keys.following(reader), b"0", *authors)
        if cached:
            for i, flag in zip(at, followed, strict=True):
                flags[i] = flag
    return found + flags


BUMP_COUNTER = read_lua(LUA_DIR, "bump_counter")


async def bump_counter(redis_client: AnyRedis, post_id: int, name: str, by: int) -> None:
    try:
        which = COUNTER_NAMES.index(name) + 1
        await redis_client.eval(BUMP_COUNTER, 1, keys.post_counters(post_id), which, by)
    except REDIS_ERRORS as exc:
        log.warning("counter of post %d not updated in Redis: %s", post_id, exc)


async def forget_post(redis_client: AnyRedis, post_id: int) -> None:
    try:
        await tombstone(redis_client, post_id)
    except REDIS_ERRORS as exc:
        log.warning("post %d not tombstoned in Redis: %s", post_id, exc)
