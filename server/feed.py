"""The home timeline read path (DESIGN.md "Read path").

Sources, each yielding post ids newest first below a cursor: the user's Redis timeline
(rebuilt from Postgres when missing; continued from Postgres past its 800-entry cap) and
the recent posts of followed celebrity-tier authors (merged at read time). They are
merged without gaps: nothing below a source's last fetched id is emitted until that
source has been read further. Ids of authors no longer followed are dropped. Redis down:
one Postgres query over followed authors serves the same pages (slower, never an error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from core.tiers import PULL_AUTHORS_SQL, TierPolicy
from server import timeline_store as store
from server.context import ServerContext
from server.hydrate import REDIS_ERRORS, Hydrator

log = logging.getLogger(__name__)

MAX_ROUNDS = 5  # bounded work per request even when most candidates are filtered out
CELEB_CACHE_SECONDS = 5.0

FOLLOWED_POSTS = """
SELECT id FROM posts
 WHERE author_id = ANY(SELECT followee_id FROM follows WHERE follower_id = $1
                       UNION ALL SELECT $1)
   AND deleted_at IS NULL AND id < $2 AND NOT (author_id = ANY($4::bigint[]))
 ORDER BY id DESC LIMIT $3
"""
# Recent posts of the given authors this user follows: at most $4 per author, each read
# in index order (a plain `author_id = ANY(...) ORDER BY id` reads every post of every
# author, then sorts them).
FOLLOWED_AUTHORS_POSTS = """
SELECT p.id FROM follows f
 CROSS JOIN LATERAL (
       SELECT id FROM posts
        WHERE author_id = f.followee_id AND deleted_at IS NULL AND id < $3
        ORDER BY id DESC LIMIT $4) p
 WHERE f.follower_id = $1 AND f.followee_id = ANY($2::bigint[])
 ORDER BY p.id DESC LIMIT $4
"""
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class FeedPage:
    posts: list[dict[str, Any]]
    next_cursor: int | None
    has_more: bool


Fetch = Callable[[int, int], Awaitable[tuple[list[int], bool]]]  # (before, n) -> ids, exhausted


class CelebrityDirectory:
    """Ids of authors in the pull tier, refreshed every few seconds per process."""

    def __init__(self, db: asyncpg.Pool, policy: TierPolicy) -> None:
        self._db = db
        self._policy = policy
        self._ids: list[int] = []
        self._fetched = 0.0

    async def ids(self) -> list[int]:
        if time.monotonic() - self._fetched > CELEB_CACHE_SECONDS:
            thresholds = await self._policy.thresholds()
            rows = await self._db.fetch(PULL_AUTHORS_SQL, thresholds.throttle_max)
            self._ids = [r["id"] for r in rows]
            self._fetched = time.monotonic()
        return self._ids


class HomeFeed:
    def __init__(self, c: ServerContext, celebs: CelebrityDirectory, reads: Counter) -> None:
        self._reads = reads
        self._c = c
        self._celebs = celebs
        self._hydrator = Hydrator(c.db, c.redis)

    async def page(self, user_id: int, before: int | None, limit: int) -> FeedPage:
        # All pull-tier authors, followed or not: excluding the ones this user does not
        # follow changes nothing in a query over followed authors, and it saves asking.
        celebs = await self._celebs.ids()
        sources = [self._timeline_source(user_id, celebs)]
        if celebs:
            sources.append(self._celebrity_source(user_id, celebs))
        try:
            return await self._merge(user_id, sources, before, limit)
        except REDIS_ERRORS as exc:
            log.warning("feed of %d served from Postgres, Redis unavailable: %s", user_id, exc)
            self._reads.labels("postgres").inc()
            return await self._merge(user_id, [self._postgres_source(user_id, [])], before, limit)

    async def newer(self, user_id: int, since: int, limit: int) -> FeedPage:
        """Posts newer than `since`, newest first (the newest `limit` when there are more)."""
        page = await self.page(user_id, None, limit)
        fresh = [p for p in page.posts if int(p["id"]) > since]
        more = len(fresh) == len(page.posts) and page.has_more
        return FeedPage(fresh, None, more)

    def _timeline_source(self, user_id: int, celebs: list[int]) -> Fetch:
        redis_client = self._c.redis
        postgres = self._postgres_source(user_id, celebs)
        first = True

        async def fetch(before: int, n: int) -> tuple[list[int], bool]:
            nonlocal first
            found = await store.page(redis_client, user_id, before, n)
            if first:  # the first read doubles as the existence check
                first = False
                if found is None:
                    await self._rebuild(user_id, celebs)
                    self._reads.labels("rebuild").inc()
                    found = await store.page(redis_client, user_id, before, n)
                else:
                    self._reads.labels("redis").inc()
            if found is None:  # evicted while paging: Postgres has the same history
                return await postgres(before, n)
            if len(found.ids) == n or found.complete:
                return found.ids, len(found.ids) < n
            # Past the capped timeline: older history continues in Postgres.
            lower = found.ids[-1] if found.ids else before
            rest, exhausted = await postgres(lower, n - len(found.ids))
            return found.ids + rest, exhausted

        return fetch

    def _postgres_source(self, user_id: int, excluded_authors: list[int]) -> Fetch:
        async def fetch(before: int, n: int) -> tuple[list[int], bool]:
            rows = await self._c.db.fetch(FOLLOWED_POSTS, user_id, before, n, excluded_authors)
            return [r["id"] for r in rows], len(rows) < n

        return fetch

    def _celebrity_source(self, user_id: int, celebs: list[int]) -> Fetch:
        async def fetch(before: int, n: int) -> tuple[list[int], bool]:
            rows = await self._c.db.fetch(FOLLOWED_AUTHORS_POSTS, user_id, celebs, before, n)
            return [r["id"] for r in rows], len(rows) < n

        return fetch

    async def _rebuild(self, user_id: int, celebs: list[int]) -> None:
        cap = self._c.settings.timeline_cap
        rows = await self._c.db.fetch(FOLLOWED_POSTS, user_id, MAX_ID, cap + 1, celebs)
        await store.build(self._c.redis, user_id, [r["id"] for r in rows], cap)
        log.info("rebuilt timeline of user %d from Postgres (%d posts)", user_id, len(rows))

    async def _merge(
        self, user_id: int, sources: list[Fetch], before: int | None, limit: int
    ) -> FeedPage:
        cursor = MAX_ID if before is None else before
        emitted: list[dict[str, Any]] = []
        has_more = False
        for _ in range(MAX_ROUNDS):
            want = limit - len(emitted) + 1  # one extra tells whether more remain
            batches = await _together([fetch(cursor, want) for fetch in sources])
            boundary = max(
                (ids[-1] for ids, exhausted in batches if ids and not exhausted), default=0
            )
            candidates = sorted(
                {i for ids, _ in batches for i in ids if i >= boundary}, reverse=True
            )
            live = await self._visible(user_id, candidates)
            has_more = boundary > 0 or len(live) > limit - len(emitted)
            take = live[: limit - len(emitted)]
            emitted.extend(take)
            if len(emitted) >= limit:
                cursor = int(emitted[-1]["id"])
                has_more = has_more or len(live) > len(take)
                break
            cursor = boundary if boundary else (int(emitted[-1]["id"]) if emitted else cursor)
            if not boundary:
                has_more = False
                break
        return FeedPage(emitted, cursor if has_more else None, has_more)

    async def _visible(self, user_id: int, ids: list[int]) -> list[dict[str, Any]]:
        """Hydrated posts, newest first, minus deleted ones and authors no longer followed."""
        posts = await self._hydrator.posts(ids)
        authors = {int(p["author"]["id"]) for p in posts.values()} - {user_id}
        followed = {user_id}
        if authors:
            rows = await self._c.db.fetch(
                "SELECT followee_id FROM follows WHERE follower_id = $1 AND followee_id = ANY($2)",
                user_id,
                list(authors),
            )
            followed.update(r["followee_id"] for r in rows)
        return [posts[i] for i in ids if i in posts and int(posts[i]["author"]["id"]) in followed]


async def _together(
    calls: list[Awaitable[tuple[list[int], bool]]],
) -> list[tuple[list[int], bool]]:
    """Sources are independent (Redis, Postgres): wait for them at once. Every call runs
    to its end before the first error is raised, so none is left running unowned."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


FEED = web.AppKey("home_feed", HomeFeed)
