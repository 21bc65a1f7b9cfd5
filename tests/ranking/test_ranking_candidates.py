"""The ranked feed's candidate read (server/feed/candidates.py) against the chronological
feed it must agree with: the same posts (timeline and followed pull-tier authors, deleted
posts and unfollowed authors dropped), with authors, counts and facts as the posts' JSON
says, whether the caches hold them or Postgres fills them; on one Redis and on a cluster."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import keys
from core.clients import AnyRedis, create_any_redis
from core.settings import Settings
from ranking.store import FeatureStore
from server.context import CTX
from server.feed.candidates import CandidateReader, Pool
from server.feed.home import FEED
from server.feed.ranked import RANKED
from tests.support.api import MakeClient, User, follow, post, sign_up
from tests.support.api_server import serve_api

Client = TestClient[web.Request, web.Application]


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def served(
    request: pytest.FixtureRequest, ranked_settings: Settings, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[Client, AnyRedis]]:
    settings = ranked_settings
    if request.param == "cluster":
        cluster: Settings = request.getfixturevalue("cluster_settings")
        # The same generous budget: a busy machine's ranked page must not fall back here.
        settings = dataclasses.replace(cluster, ranking_budget_ms=settings.ranking_budget_ms)
    client = await create_any_redis(settings)
    try:
        yield await aiohttp_client(serve_api(settings)), client
    finally:
        await client.aclose()


async def chronological(api: Client, user: User) -> list[dict[str, Any]]:
    resp = await api.get("/v1/feed", params={"limit": "100"}, headers=user.auth)
    assert resp.status == 200, await resp.text()
    posts: list[dict[str, Any]] = (await resp.json())["posts"]
    return posts


def described(pool: Pool) -> list[tuple[int, int, str, int, bool, bool, object]]:
    c = pool.columns
    return list(
        zip(
            c.ids,
            c.authors,
            pool.handles,
            c.engagements,
            c.replies,
            c.reposts,
            c.originals,
            strict=True,
        )
    )


def expected(posts: list[dict[str, Any]]) -> list[tuple[int, int, str, int, bool, bool, object]]:
    out: list[tuple[int, int, str, int, bool, bool, object]] = []
    for p in posts:
        k = p["counts"]
        original = int(p["repost_of"]) if p["repost_of"] else int(p["id"])
        out.append(
            (
                int(p["id"]),
                int(p["author"]["id"]),
                p["author"]["handle"],
                k["likes"] + 2 * k["reposts"] + k["replies"],
                p["reply_to"] is not None,
                p["repost_of"] is not None,
                original,
            )
        )
    return out


async def test_candidates_are_the_chronological_feeds_posts_from_caches_or_postgres(
    served: tuple[Client, AnyRedis], db: asyncpg.Pool
) -> None:
    api, redis_client = served
    reader, a, b, celebrity = [await sign_up(api) for _ in range(4)]
    for author in (a, b, celebrity):
        await follow(api, reader, author)
    # Pull tier before this server's first feed read: merged at read time, in no timeline.
    await db.execute("UPDATE users SET fanout_tier = 'pull' WHERE id = $1", int(celebrity.id))
    original = await post(api, b, "from b")
    await post(api, a, "a reply", reply_to=original)
    await post(api, a, "a repost", repost_of=original)
    liked = await post(api, celebrity, "from the pull tier")
    resp = await api.post(f"/v1/posts/{liked}/like", headers=a.auth)
    assert resp.status == 200
    await post(api, reader, "mine")
    doomed = await post(api, a, "deleted soon")
    reader_id = int(reader.id)
    feed = api.app[FEED]
    candidates = api.app[RANKED].candidates
    assert await candidates.read(reader_id, 300, 0) is None  # no timeline yet: general path
    posts = await chronological(api, reader)  # builds the timeline
    assert len(posts) == 6
    pool = await candidates.read(reader_id, 300, 0)
    assert pool is not None
    assert described(pool) == expected(posts)
    assert pool.engaged == [int(liked), int(original)]  # liked; reposted
    assert pool.reader.followees == {int(a.id), int(b.id), int(celebrity.id)}
    assert pool.reader.affinity == {} and pool.reader.seen == set()
    # A ranked page shows the same posts, counts included, as the chronological one.
    resp = await api.get("/v1/feed", params={"algorithm": "ranked"}, headers=reader.auth)
    body = await resp.json()
    assert body["algorithm"] == "ranked"
    shown = {p["id"]: {k: v for k, v in p.items() if k != "reason"} for p in body["posts"]}
    chronological_posts = {p["id"]: p for p in posts}
    assert len(shown) == len(posts) - 1  # b's post and a's repost of it: once
    assert all(chronological_posts[i] == p for i, p in shown.items())
    # The reader's own features come in the same read: affinity to followees, posts shown.
    store = FeatureStore(redis_client)
    await store.record_engagement("like", reader_id, int(a.id), None)
    await store.log_impressions(reader_id, [int(liked)])
    pool = await candidates.read(reader_id, 300, 0)
    assert pool is not None and described(pool) == expected(posts)
    assert list(pool.reader.affinity) == [int(a.id)] and pool.reader.affinity[int(a.id)] > 0
    assert pool.reader.seen == {int(i) for i in shown} | {int(liked)}  # the page's too

    resp = await api.delete(f"/v1/posts/{doomed}", headers=a.auth)
    assert resp.status in (200, 204), await resp.text()
    resp = await api.delete(f"/v1/users/{b.id}/follow", headers=reader.auth)
    assert resp.status == 200, await resp.text()
    posts = await chronological(api, reader)
    assert len(posts) == 4 and original not in {p["id"] for p in posts}
    pool = await candidates.read(reader_id, 300, 0)
    assert pool is not None and described(pool) == expected(posts)

    # Nothing cached but the timeline: counters from Postgres, facts from the posts' JSON.
    for p in posts:
        await redis_client.delete(keys.post_counters(int(p["id"])))
    cold = CandidateReader(api.app[CTX], feed, 100)
    pool = await cold.read(reader_id, 300, 0)
    assert pool is not None and described(pool) == expected(posts)
    # Counts read from Postgres serve ranking a while (COUNTED_SECONDS); a reader without
    # them reads Postgres again.
    first = int(posts[0]["id"])
    await db.execute("UPDATE posts SET like_count = like_count + 7 WHERE id = $1", first)
    pool = await cold.read(reader_id, 300, 0)
    assert pool is not None and described(pool) == expected(posts)
    again = await CandidateReader(api.app[CTX], feed, 100).read(reader_id, 300, 0)
    assert again is not None and again.columns.engagements[0] == pool.columns.engagements[0] + 7
    # The window and the number asked for bound the candidates.
    newest = [int(p["id"]) for p in posts]
    pool = await cold.read(reader_id, 2, 0)
    assert pool is not None and pool.columns.ids == newest[:2]
    pool = await cold.read(reader_id, 300, newest[1])
    assert pool is not None and pool.columns.ids == newest[:2]
