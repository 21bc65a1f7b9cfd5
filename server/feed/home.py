"""The home timeline read path (DESIGN.md "Read path").

Sources, each yielding post ids newest first below a cursor: the user's Redis timeline
(rebuilt from Postgres when missing; continued from Postgres past its 800-entry cap) and
the recent posts of followed celebrity-tier authors (merged at read time). They are
merged without gaps: nothing below a source's last fetched id is emitted until that
source has been read further. Ids of authors no longer followed are dropped. Redis down:
one Postgres query over followed authors serves the same pages (slower, never an error),
and a page that found Redis unavailable asks it nothing more (each call could wait a
whole Redis deadline; the gate of core/redis_gate.py refuses the next pages' at once).

A page normally costs one Redis call and no Postgres query: one script
(server/feed/lua/feed_page.lua) reads the timeline page, picks the celebrity-tier authors
the user follows (the following cache, server/feed/following.py) and merges their recent
posts, which each process holds (refreshed every CELEB_POSTS_SECONDS, and at once for
posts created by this process) and sends along; it drops authors no longer followed and
deleted posts and returns the posts' cached counters, which the server splices into
the bodies it holds (core/recent.py; read from Redis once per process). When a
cache misses, or history runs past what the caches hold, the script says so and the
general path (HomeFeed._general) finishes the page: cache fills, Postgres, more rounds
of merging.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import repeat

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster

from core import keys, timelines
from core.clients import gate_of
from core.lean_cluster import LeanCluster
from core.lean_redis import LeanClient, LeanRedis
from core.media_urls import media_base_url
from core.recent import Recent
from core.redis_address import RedisAddress
from core.redis_gate import RedisUnavailable
from core.tiers import PULL_AUTHORS_SQL, TierPolicy
from server.context import ServerContext
from server.feed import timeline_reads as store
from server.feed.following import FollowingCache
from server.feed.hydrate import REDIS_ERRORS, Hydrator
from server.http import validation as v

log = logging.getLogger(__name__)

MAX_ROUNDS = 5  # bounded work per request even when most candidates are filtered out
CELEB_CACHE_SECONDS = 5.0  # who is in the pull tier
CELEB_POSTS_SECONDS = 1.0  # their recent posts (posts made through this process: at once)
CELEB_POSTS_DEPTH = 200  # recent posts held per celebrity-tier author; older: Postgres
# Up to this many pull-tier authors, their held posts travel with the page script (one
# round trip for a page); with more, the general path merges them (the bytes sent per
# call would grow with the tier, whoever the reader follows).
CELEB_INLINE_MAX = 32
REDIS_READ_TIMEOUT = 2.0  # seconds a page's Redis call may take before Postgres serves it

# A rebuild's second read of the newest posts (HomeFeed._rebuild): a post committed
# while the timeline was being built is among them unless the followed accounts posted
# more than this many times in those milliseconds.
REBUILD_CATCH_UP = 100
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
RECENT_POSTS = """
SELECT a.author_id, p.id FROM unnest($1::bigint[]) AS a(author_id)
 CROSS JOIN LATERAL (
       SELECT id FROM posts
        WHERE author_id = a.author_id AND deleted_at IS NULL
        ORDER BY id DESC LIMIT $2) p
"""
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class FeedPage:
    posts: list[bytes]  # each post's JSON, ready to send (see Hydrator.for_reader)
    ids: list[int]  # the same posts' ids
    next_cursor: int | None
    has_more: bool


Fetch = Callable[[int, int], Awaitable[tuple[list[int], bool]]]  # (before, n) -> ids, exhausted


class Celebrities:
    """Who is in the pull tier, and their recent posts (ids ascending, per author), held
    by each process and refreshed by the first read that finds them stale; other reads
    meanwhile use what is held. A post is merged into followers' feeds within
    CELEB_POSTS_SECONDS, or at once when it was created through this process."""

    def __init__(self, db: asyncpg.Pool, policy: TierPolicy) -> None:
        self._db = db
        self._policy = policy
        self._ids: list[int] = []
        self._fetched = 0.0
        self._ids_refreshing = False
        self._recent: dict[int, list[int]] = {}
        self._members: dict[int, list[bytes]] = {}  # the same posts as timeline members
        self._complete: set[int] = set()  # authors whose every post is held
        self._posts_fetched = 0.0
        self._posts_refreshing = False
        self._first_pages: dict[int, list[bytes]] = {}  # held() of first pages, by size

    async def held(self, authors: list[int], before: int | None, n: int) -> list[bytes] | None:
        """The held posts of `authors` (as ids() gave them) older than `before`, as the
        page script takes them (_held_below); None when there are too many authors to
        send with every page."""
        if len(authors) > CELEB_INLINE_MAX:
            return None
        await self._fresh()
        if before is not None or authors is not self._ids:
            return self._held_below(authors, MAX_ID if before is None else before, n)
        args = self._first_pages.get(n)
        if args is None:  # the same for every reader until the posts change
            args = self._first_pages[n] = self._held_below(authors, MAX_ID, n)
        return args

    def _held_below(self, authors: list[int], before: int, n: int) -> list[bytes]:
        """The two arguments server/feed/lua/feed_page.lua takes them as: a kind per author,
        then up to n + 1 posts per author (one more than a batch takes: whether more
        remain), tagged with the author's position, all merged newest first."""
        kinds = bytearray()
        tagged: list[tuple[int, bytes, bytes]] = []
        for position, author in enumerate(authors, start=1):
            held = self._recent.get(author, [])
            end = bisect.bisect_left(held, before)
            if author in self._complete:
                kinds += b"c"
            else:
                kinds += b"p" if end >= n else b"x"
            start = max(0, end - n - 1)
            members = self._members.get(author, [])[start:end]
            tagged.extend(zip(held[start:end], repeat(bytes((position,))), members))
        tagged.sort(reverse=True)  # post ids are unique: tags and members never compared
        merged = b"".join(tag + member for _, tag, member in tagged)
        return [bytes(kinds), merged]

    async def ids(self) -> list[int]:
        stale = time.monotonic() - self._fetched > CELEB_CACHE_SECONDS
        # One read refreshes; the others use the list held. Every read that found the list
        # stale used to ask Postgres itself: at 2 000 reads/s, ~18 scans of `users` at once
        # every CELEB_CACHE_SECONDS (110 in a 30 s benchmark), the tail's worst bursts.
        if not stale or (self._ids_refreshing and self._fetched):
            return self._ids
        self._ids_refreshing = True
        try:
            thresholds = await self._policy.thresholds()
            rows = await self._db.fetch(PULL_AUTHORS_SQL, thresholds.throttle_max)
            ids = [r["id"] for r in rows]
            if set(ids) != set(self._ids):
                self._posts_fetched = 0.0  # new authors: their posts are needed now
            self._ids = ids
            self._fetched = time.monotonic()
        finally:
            self._ids_refreshing = False
        return self._ids

    async def below(self, authors: list[int], before: int, n: int) -> tuple[list[int], bool] | None:
        """The `n` newest posts of `authors` older than `before` and whether there are no
        more, from what is held; None when that is not enough (ask Postgres)."""
        await self._fresh()
        found: list[int] = []
        below = 0  # held posts older than `before`, all of them (not only the n newest)
        rest_in_postgres = False
        for author in authors:
            held = self._recent.get(author, [])
            end = bisect.bisect_left(held, before)
            if author not in self._complete:
                if end < n:
                    return None  # older posts than those held may belong on this page
                rest_in_postgres = True
            found.extend(held[max(0, end - n) : end])
            below += end
        found.sort(reverse=True)
        return found[:n], below <= n and not rest_in_postgres

    def created(self, author: int, post_id: int) -> None:
        """A post just made through this process: merged from now on, not a second later."""
        held = self._recent.get(author)
        if held is None:
            return
        at = bisect.bisect_left(held, post_id)
        if at == len(held) or held[at] != post_id:  # a refresh may have read it already
            held.insert(at, post_id)
            self._members[author].insert(at, keys.timeline_member(post_id))
            self._first_pages = {}

    async def _fresh(self) -> None:
        stale = time.monotonic() - self._posts_fetched > CELEB_POSTS_SECONDS
        if not stale or (self._posts_refreshing and self._posts_fetched):
            return
        self._posts_refreshing = True
        try:
            authors = list(self._ids)
            rows = await self._db.fetch(RECENT_POSTS, authors, CELEB_POSTS_DEPTH)
            recent: dict[int, list[int]] = {a: [] for a in authors}
            for row in rows:
                recent[row["author_id"]].append(row["id"])
            self.hold(recent, {a for a, held in recent.items() if len(held) < CELEB_POSTS_DEPTH})
            self._posts_fetched = time.monotonic()
        finally:
            self._posts_refreshing = False

    def hold(self, recent: dict[int, list[int]], complete: set[int]) -> None:
        """Hold these recent posts per author (`complete`: the authors with no others)."""
        for held in recent.values():
            held.sort()
        self._recent = recent
        self._members = {a: list(map(keys.timeline_member, held)) for a, held in recent.items()}
        self._complete = complete
        self._first_pages = {}


class HomeFeed:
    def __init__(
        self, c: ServerContext, celebs: Celebrities, reads: Counter, general: Counter
    ) -> None:
        self._reads = reads
        self._general_pages = general
        self._redis_reads = reads.labels("redis")
        self._c = c
        self.celebs = celebs
        # The page's script calls skip redis-py (core/lean_redis.py); one deadline each,
        # past which the page comes from Postgres. They share the redis-py client's gate:
        # a Redis that one found unreachable fails the other's calls fast too.
        # On a Redis Cluster, one such link per master (core/lean_cluster.py), each with
        # its own gate: one master unreachable fails fast the pages that need it.
        self._lean: LeanClient
        # On a cluster, the authors of posts read before (a post's author never changes):
        # with a page's all known, its unfollow filter travels with its counters.
        self.post_authors: Recent[int, bytes] | None = None
        if isinstance(c.redis, RedisCluster):
            self._lean = LeanCluster(RedisAddress.of_cluster(c.redis), timeout=REDIS_READ_TIMEOUT)
            self.post_authors = Recent(c.settings.feed_held_posts)
        else:
            self._lean = LeanRedis(
                RedisAddress.of(c.redis), timeout=REDIS_READ_TIMEOUT, gate=gate_of(c.redis)
            )
        # Post bodies held without expiry: a body never changes (core/post_cache.py), and
        # a deleted post is told by its counters, which every page still reads from Redis.
        self._hydrator = Hydrator(
            c.db,
            c.redis,
            media_base_url(c.settings),
            Recent[int, bytes](c.settings.feed_held_posts),
        )
        self._following = FollowingCache(c.db, c.redis)

    async def close(self) -> None:
        await self._lean.close()

    @property
    def following(self) -> FollowingCache:
        return self._following

    @property
    def lean(self) -> LeanClient:
        """The pages' wire client (core/lean_redis.py), for the ranked feed's calls too."""
        return self._lean

    async def page(self, user_id: int, before: int | None, limit: int) -> FeedPage:
        # All pull-tier authors, followed or not: excluding the ones this user does not
        # follow changes nothing in a query over followed authors, and it saves asking.
        celebs = await self.celebs.ids()
        try:
            held = await self.celebs.held(celebs, before, limit + 1)
            first = await store.read_page(
                self._lean, user_id, before, limit, celebs, held, self.post_authors
            )
            if isinstance(first, store.ReadyPage):
                self._redis_reads.inc()
                hydrator, ids = self._hydrator, first.ids
                posts, shown = await hydrator.spliced_page(self._lean, ids, first.counters)
                return FeedPage(posts, shown, ids[-1] if first.has_more else None, first.has_more)
            self._general_pages.inc()
            return await self._general(user_id, celebs, before, limit, first)
        except REDIS_ERRORS as exc:
            _fallback("feed of %d served from Postgres, Redis unavailable: %s", user_id, exc)
            self._reads.labels("postgres").inc()
            # Nothing more is asked of Redis for this page: each call could wait as long.
            sources = [self._postgres_source(user_id, [])]
            return await self._merge(user_id, sources, before, limit, redis=False)

    async def visible(self, user_id: int, ids: list[int]) -> list[tuple[int, bytes]]:
        """These posts hydrated (id, JSON) in the given order, minus deleted ones and
        authors no longer followed (the ranked feed's later pages, server/feed/ranked.py)."""
        found = dict(await self._visible(user_id, ids))
        return [(i, found[i]) for i in ids if i in found]

    async def newer(self, user_id: int, since: int, limit: int) -> FeedPage:
        """Posts newer than `since`, newest first (the newest `limit` when there are more)."""
        page = await self.page(user_id, None, limit)
        fresh = [i for i, post_id in enumerate(page.ids) if post_id > since]
        more = len(fresh) == len(page.ids) and page.has_more
        return FeedPage([page.posts[i] for i in fresh], [page.ids[i] for i in fresh], None, more)

    async def _general(
        self,
        user_id: int,
        celebs: list[int],
        before: int | None,
        limit: int,
        first: store.FirstRead,
    ) -> FeedPage:
        """The page when the page script could not make it alone: a cache to fill, posts
        to read from Postgres, history past the timeline's cap, more rounds of merging."""
        followed = first.followed
        if followed is None:
            followees = await self._following.fill(user_id)
            followed = [a for a in celebs if a in followees]
        page = first.page
        if page is None:
            await self._rebuild(user_id, celebs)
            self._reads.labels("rebuild").inc()
        else:
            self._redis_reads.inc()
        # The page just read serves the merge's first fetch of the timeline.
        prefetched = (MAX_ID if before is None else before, limit + 1, page)
        sources = [self._timeline_source(user_id, celebs, prefetched)]
        if followed:
            sources.append(self._celebrity_source(user_id, followed))
        return await self._merge(user_id, sources, before, limit)

    def _timeline_source(
        self, user_id: int, celebs: list[int], prefetched: tuple[int, int, timelines.Page | None]
    ) -> Fetch:
        redis_client = self._c.redis
        postgres = self._postgres_source(user_id, celebs)
        ready: tuple[int, int, timelines.Page | None] | None = prefetched

        async def fetch(before: int, n: int) -> tuple[list[int], bool]:
            nonlocal ready
            if ready is not None and ready[:2] == (before, n) and ready[2] is not None:
                found: timelines.Page | None = ready[2]
            else:
                found = await timelines.page(redis_client, user_id, before, n)
            ready = None
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
            rows = await self._c.reads.fetch(FOLLOWED_POSTS, user_id, before, n, excluded_authors)
            return [r["id"] for r in rows], len(rows) < n

        return fetch

    def _celebrity_source(self, user_id: int, followed: list[int]) -> Fetch:
        """Posts of the celebrity-tier authors the user follows (as the following cache
        said): held by this process, or from Postgres past what it holds."""

        async def fetch(before: int, n: int) -> tuple[list[int], bool]:
            held = await self.celebs.below(followed, before, n)
            if held is not None:
                return held
            rows = await self._c.reads.fetch(FOLLOWED_AUTHORS_POSTS, user_id, followed, before, n)
            return [r["id"] for r in rows], len(rows) < n

        return fetch

    async def _rebuild(self, user_id: int, celebs: list[int]) -> None:
        """Builds the missing timeline from Postgres, then reads Postgres once more: a
        post committed after the first read and fanned out before the timeline existed
        was skipped by fan-out (it writes only into timelines that exist), and would be
        missing from this timeline for as long as it lives. Posts committed after the
        build are fan-out's to add. Ids are taken before commit, so a late post is not
        always the newest: the second read takes the newest REBUILD_CATCH_UP again.
        Both reads may run on the read replica, each as fresh as the primary was when
        it began (core/replica.py): a post its author just made is in the first."""
        cap = self._c.settings.timeline_cap
        rows = await self._c.reads.fetch(FOLLOWED_POSTS, user_id, MAX_ID, cap + 1, celebs)
        built = [r["id"] for r in rows]
        await timelines.build(self._c.redis, user_id, built, cap)
        again = await self._c.reads.fetch(FOLLOWED_POSTS, user_id, MAX_ID, REBUILD_CATCH_UP, celebs)
        floor = min(built[:cap], default=0) if len(built) > cap else 0
        late = sorted(set(r["id"] for r in again) - set(built), reverse=True)
        late = [p for p in late if p > floor]  # older than the timeline: Postgres has it
        if late:
            await timelines.add_posts(self._c.redis, user_id, late, cap)
        log.info(
            "rebuilt timeline of user %d from Postgres (%d posts, %d committed meanwhile)",
            user_id,
            len(rows),
            len(late),
        )

    async def _merge(
        self,
        user_id: int,
        sources: list[Fetch],
        before: int | None,
        limit: int,
        redis: bool = True,
    ) -> FeedPage:
        cursor = MAX_ID if before is None else before
        emitted: list[tuple[int, bytes]] = []
        has_more = False
        for _ in range(MAX_ROUNDS):
            want = limit - len(emitted) + 1  # one extra tells whether more remain
            # One after the other: on a first page no source does I/O (the timeline page
            # came with the following cache, celebrity posts are held in memory), and a
            # task per source cost more than it saved on the rare pages that do.
            batches = [await fetch(cursor, want) for fetch in sources]
            boundary = max(
                (ids[-1] for ids, exhausted in batches if ids and not exhausted), default=0
            )
            candidates = sorted(
                {i for ids, _ in batches for i in ids if i >= boundary}, reverse=True
            )
            live = await self._visible(user_id, candidates, redis)
            has_more = boundary > 0 or len(live) > limit - len(emitted)
            take = live[: limit - len(emitted)]
            emitted.extend(take)
            if len(emitted) >= limit:
                cursor = emitted[-1][0]
                has_more = has_more or len(live) > len(take)
                break
            cursor = boundary if boundary else (emitted[-1][0] if emitted else cursor)
            if not boundary:
                has_more = False
                break
        return FeedPage(
            [post for _, post in emitted],
            [post_id for post_id, _ in emitted],
            cursor if has_more else None,
            has_more,
        )

    async def _visible(
        self, user_id: int, ids: list[int], redis: bool = True
    ) -> list[tuple[int, bytes]]:
        """Hydrated posts (id, JSON), newest first, minus deleted ones and authors no
        longer followed. `redis=False`: from Postgres alone."""
        if not redis:
            posts, flags, unsure = await self._from_postgres(ids)
        else:
            try:
                posts, flags, unsure = await self._hydrator.for_reader(self._lean, user_id, ids)
            except REDIS_ERRORS as exc:
                _fallback("posts of feed of %d from Postgres, Redis unavailable: %s", user_id, exc)
                posts, flags, unsure = await self._from_postgres(ids)
        authors = set(unsure.values()) - {user_id}
        followed = {user_id}
        if authors:
            rows = await self._c.db.fetch(
                "SELECT followee_id FROM follows WHERE follower_id = $1 AND followee_id = ANY($2)",
                user_id,
                list(authors),
            )
            followed.update(r["followee_id"] for r in rows)
        for post_id, author in unsure.items():
            flags[post_id] = 1 if author in followed else 0
        return [(i, posts[i]) for i in ids if i in posts and flags.get(i) == 1]

    async def _from_postgres(
        self, ids: list[int]
    ) -> tuple[dict[int, bytes], dict[int, int], dict[int, int]]:
        """As Hydrator.for_reader, from Postgres alone: every author unsure."""
        found = await self._hydrator.from_postgres(ids)
        posts = {i: orjson.dumps(p) for i, p in found.items()}
        return posts, {}, {i: int(p["author"]["id"]) for i, p in found.items()}


def _fallback(message: str, user_id: int, exc: BaseException) -> None:
    # Refused by the gate: the outage was logged once, when the gate tripped.
    level = logging.DEBUG if isinstance(exc, RedisUnavailable) else logging.WARNING
    log.log(level, message, user_id, exc)


FEED = web.AppKey("home_feed", HomeFeed)


def page_body(page: FeedPage, cursor: bool, algorithm: str | None = None) -> bytes:
    """The posts are JSON already (Hydrator.for_reader): joined, not parsed and dumped.
    Written by the handler (server/handlers/home.py) and by server/http/fast_feed.py, which
    answers most GET /v1/feed requests.
    `algorithm`: said in the body when the request named one."""
    tail: dict[str, object] = {"has_more": page.has_more}
    if cursor:
        next_cursor = page.next_cursor
        tail["next_cursor"] = v.encode_cursor("feed", next_cursor) if next_cursor else None
    if algorithm is not None:
        tail["algorithm"] = algorithm
    return b'{"posts":[' + b",".join(page.posts) + b"]," + orjson.dumps(tail)[1:]
