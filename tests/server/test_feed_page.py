"""The one-call feed page (server/feed/lua/feed_page.lua) against the general path it
shortcuts: on random timelines, following sets, pull-tier posts, deletions, unfollows and
cursors, every page the script makes alone must be the page the general path makes, and
it must decline (hand over to the general path) whenever a cache misses."""

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import keys, timelines
from core.clients import AnyRedis, create_any_redis
from core.post_cache import TOMBSTONE, encode_counters, tombstone
from core.settings import Settings
from server.feed import timeline_reads as store
from server.feed.home import CELEB_INLINE_MAX, FEED, FeedPage, HomeFeed
from tests.support.api import MakeClient
from tests.support.api_server import serve_api

FAR_FUTURE = 1e12  # a fetch time that never goes stale


@dataclass
class Scenario:
    reader: int
    celebs: list[int]
    cursors: list[int | None]


def hold(
    feed: HomeFeed, celebs: list[int], recent: dict[int, list[int]], complete: set[int]
) -> None:
    """Makes the process hold exactly these pull-tier authors and posts (no Postgres)."""
    c = feed.celebs
    c._ids = celebs
    c.hold(recent, complete)
    c._fetched = c._posts_fetched = time.monotonic() + FAR_FUTURE


def body(post_id: int, author: int) -> bytes:
    return orjson.dumps({"id": str(post_id), "author": {"id": str(author)}, "text": 'héllo "}'})


async def build(redis_client: AnyRedis, feed: HomeFeed, rng: random.Random) -> Scenario:
    """A reader with a timeline of posts by authors they follow or no longer follow,
    deleted posts, and followed and unfollowed pull-tier authors."""
    reader = rng.randrange(10**12, 2 * 10**12)
    normals = [reader + 1 + i for i in range(6)]
    celebs = [reader + 100 + i for i in range(4)]
    followed = {a for a in normals + celebs if rng.random() < 0.7}
    next_id = rng.randrange(10**15, 10**16)
    pipe = redis_client.pipeline(transaction=False)
    timeline: list[int] = []
    recent: dict[int, list[int]] = {c: [] for c in celebs}
    for _ in range(rng.randrange(0, 80)):
        next_id += rng.randrange(1, 10**6)
        author = rng.choice([reader, *normals, *celebs, *celebs])
        if author in recent:
            recent[author].append(next_id)
        else:
            timeline.append(next_id)
        if rng.random() < 0.25:  # deleted
            pipe.set(keys.post_cache(next_id), TOMBSTONE)
            pipe.set(keys.post_counters(next_id), TOMBSTONE)
            continue
        pipe.set(keys.post_cache(next_id), body(next_id, author))
        likes, reposts, replies = (rng.randrange(0, 1000) for _ in range(3))
        pipe.set(keys.post_counters(next_id), encode_counters(author, likes, reposts, replies))
    complete = rng.random() < 0.8
    members = {keys.timeline_member(p): 0 for p in timeline}
    if complete:
        members[timelines.SENTINEL] = 0
    tl = keys.timeline(reader)
    pipe.delete(tl, keys.following(reader))
    if members:
        pipe.zadd(tl, members)
    pipe.sadd(keys.following(reader), "0", *map(str, followed))
    await pipe.execute()
    held_complete = {c for c in celebs if rng.random() < 0.7}
    hold(feed, celebs, recent, held_complete)
    everything = timeline + [p for ps in recent.values() for p in ps]
    cursors: list[int | None] = [None, *rng.sample(everything, min(3, len(everything)))]
    return Scenario(reader, celebs, cursors)


async def general_page(
    redis_client: AnyRedis, feed: HomeFeed, s: Scenario, before: int | None, limit: int
) -> FeedPage:
    page = await timelines.page(redis_client, s.reader, before, limit + 1)
    following = {int(m) for m in await redis_client.smembers(keys.following(s.reader))}
    first = store.FirstRead(page, [c for c in s.celebs if c in following])
    return await feed._general(s.reader, s.celebs, before, limit, first)


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def served(
    request: pytest.FixtureRequest, settings: Settings, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], AnyRedis]]:
    """The API server and a client of its Redis: one Redis, or a 3-master cluster (where
    the page script stops after its merge and the server reads the counters node by
    node: server/feed/timeline_reads.py)."""
    if request.param == "cluster":
        settings = request.getfixturevalue("cluster_settings")
    client = await create_any_redis(settings)
    try:
        yield await aiohttp_client(serve_api(settings)), client
    finally:
        await client.aclose()


async def test_every_page_the_script_makes_is_the_general_paths_page(
    served: tuple[TestClient[web.Request, web.Application], AnyRedis],
) -> None:
    api, redis_client = served
    feed = api.app[FEED]
    rng = random.Random(20261121)
    made = declined = 0
    for _ in range(60):
        s = await build(redis_client, feed, rng)
        for before in s.cursors:
            limit = rng.choice([1, 2, 3, 5, 20])
            held = await feed.celebs.held(s.celebs, before, limit + 1)
            fast = await store.read_page(
                feed._lean, s.reader, before, limit, s.celebs, held, feed.post_authors
            )
            expected = await general_page(redis_client, feed, s, before, limit)
            if isinstance(fast, store.FirstRead):
                declined += 1
                continue
            made += 1
            posts, shown = await feed._hydrator.spliced_page(feed._lean, fast.ids, fast.counters)
            assert fast.ids == shown == expected.ids
            assert posts == expected.posts
            assert fast.has_more == expected.has_more
            assert (fast.ids[-1] if fast.has_more else None) == expected.next_cursor
    # Both paths were taken often: declines come from incomplete timelines, pull-tier
    # authors whose held posts run out, and pages that need a second round of merging.
    assert made >= 60 and declined >= 20, (made, declined)


async def test_spliced_counts_and_unicode_survive_the_script(
    api: TestClient[web.Request, web.Application], redis_client: aioredis.Redis
) -> None:
    feed = api.app[FEED]
    reader, author, post_id = 3_000_000_001, 3_000_000_002, 3_000_000_003
    hold(feed, [], {}, set())
    text = 'e\u0301 \U0001f600 \u05e9\u05dc\u05d5\u05dd \u202e \\u0000 "}]'
    raw = orjson.dumps({"id": str(post_id), "author": {"id": str(author)}, "text": text})
    await redis_client.set(keys.post_cache(post_id), raw)
    await redis_client.set(keys.post_counters(post_id), b"%d,7,0,-1" % author)
    await redis_client.zadd(
        keys.timeline(reader), {keys.timeline_member(post_id): 0, timelines.SENTINEL: 0}
    )
    await redis_client.sadd(keys.following(reader), "0", str(author))
    page = await feed.page(reader, None, 20)
    assert [orjson.loads(p) for p in page.posts] == [
        {**orjson.loads(raw), "counts": {"likes": 7, "reposts": 0, "replies": -1}}
    ]
    assert page.ids == [post_id] and page.next_cursor is None and not page.has_more


async def test_the_script_declines_when_a_cache_misses(
    api: TestClient[web.Request, web.Application], redis_client: aioredis.Redis
) -> None:
    """Each miss hands the page to the general path, which fills from Postgres."""
    feed = api.app[FEED]
    reader, author, post_id = 3_000_000_101, 3_000_000_102, 3_000_000_103
    hold(feed, [], {}, set())
    tl, following = keys.timeline(reader), keys.following(reader)

    async def read() -> store.ReadyPage | store.FirstRead:
        return await store.read_page(feed._lean, reader, None, 20, [], [])

    await redis_client.delete(tl, following)
    assert isinstance(await read(), store.FirstRead)  # no timeline
    await redis_client.zadd(tl, {keys.timeline_member(post_id): 0, timelines.SENTINEL: 0})
    assert isinstance(await read(), store.FirstRead)  # no following set
    await redis_client.sadd(following, "0", str(author))
    assert isinstance(await read(), store.FirstRead)  # no cached counters
    # Counters that are not ours, the three-count form of earlier releases among them.
    for foreign in (b"1,2,3", b"%d,1,x,3" % author, b'%d,1,2,3}],"evil":{"x":1' % author):
        await redis_client.set(keys.post_counters(post_id), foreign)
        assert isinstance(await read(), store.FirstRead)
    # The body is not the script's to read: a missing one does not decline the page.
    await redis_client.set(keys.post_counters(post_id), b"%d,1,2,3" % author)
    ready = await read()
    assert isinstance(ready, store.ReadyPage) and ready.ids == [post_id]
    await redis_client.srem(following, str(author))  # unfollowed: filtered, not declined
    ready = await read()
    assert isinstance(ready, store.ReadyPage) and ready.ids == []


async def test_a_run_of_deleted_pull_tier_posts_leaves_no_gap(
    api: TestClient[web.Request, web.Application], redis_client: aioredis.Redis
) -> None:
    """The newest pull-tier posts are all deleted: the older timeline post must wait
    for the next round, which finds the live pull-tier post above it."""
    feed = api.app[FEED]
    reader, star, friend = 3_000_000_201, 3_000_000_202, 3_000_000_203
    p7, p8, p9, p10, p11 = (3_000_000_300 + i for i in (7, 8, 9, 10, 11))
    hold(feed, [star], {star: [p8, p9, p10, p11]}, {star})
    for post_id, author in ((p7, friend), (p8, star)):
        await redis_client.set(keys.post_cache(post_id), body(post_id, author))
        await redis_client.set(keys.post_counters(post_id), encode_counters(author, 0, 0, 0))
    for post_id in (p9, p10, p11):
        await tombstone(redis_client, post_id)
    await redis_client.zadd(
        keys.timeline(reader), {keys.timeline_member(p7): 0, timelines.SENTINEL: 0}
    )
    await redis_client.sadd(keys.following(reader), "0", str(star), str(friend))
    s = Scenario(reader, [star], [])
    assert (await general_page(redis_client, feed, s, None, 1)).ids == [p8]
    first = await feed.page(reader, None, 1)
    assert first.ids == [p8] and first.next_cursor == p8
    second = await feed.page(reader, p8, 1)
    assert second.ids == [p7] and not second.has_more
    # Held posts of an author with older ones in Postgres, all deleted: the script
    # cannot tell what comes next and leaves the page to the general path.
    hold(feed, [star], {star: [p10, p11]}, set())
    held = await feed.celebs.held([star], None, 2)
    assert isinstance(
        await store.read_page(feed._lean, reader, None, 1, [star], held), store.FirstRead
    )


async def test_too_many_pull_tier_authors_are_merged_by_the_general_path(
    api: TestClient[web.Request, web.Application],
) -> None:
    feed = api.app[FEED]
    many = list(range(1, CELEB_INLINE_MAX + 2))
    hold(feed, many, {a: [] for a in many}, set(many))
    assert await feed.celebs.held(many, None, 21) is None
    assert await feed.celebs.held(many[:CELEB_INLINE_MAX], None, 21) is not None


async def test_a_held_body_serves_pages_but_never_a_deleted_post(
    api: TestClient[web.Request, web.Application], redis_client: aioredis.Redis
) -> None:
    """Bodies read once are held by the process (they never change); whether a post
    still exists is read from its counters on every page, on both paths."""
    feed = api.app[FEED]
    reader, author, kept_id, doomed_id = 3_000_000_401, 3_000_000_402, 3_000_000_403, 3_000_000_404
    hold(feed, [], {}, set())
    for post_id in (kept_id, doomed_id):
        await redis_client.set(keys.post_cache(post_id), body(post_id, author))
        await redis_client.set(keys.post_counters(post_id), encode_counters(author, 1, 0, 0))
    members = {keys.timeline_member(p): 0 for p in (kept_id, doomed_id)}
    await redis_client.zadd(keys.timeline(reader), {**members, timelines.SENTINEL: 0})
    await redis_client.sadd(keys.following(reader), "0", str(author))
    assert (await feed.page(reader, None, 20)).ids == [doomed_id, kept_id]

    # Gone from Redis (and never in Postgres): only the process's copy can serve them.
    await redis_client.delete(keys.post_cache(kept_id), keys.post_cache(doomed_id))
    page = await feed.page(reader, None, 20)
    assert page.ids == [doomed_id, kept_id]
    assert orjson.loads(page.posts[1])["counts"] == {"likes": 1, "reposts": 0, "replies": 0}

    await tombstone(redis_client, doomed_id)
    assert (await feed.page(reader, None, 20)).ids == [kept_id]
    # The general path's hydration agrees.
    posts, flags, unsure = await feed._hydrator.for_reader(feed._lean, reader, [doomed_id, kept_id])
    assert list(posts) == [kept_id] and flags == {kept_id: 1} and not unsure
