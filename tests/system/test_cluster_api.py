"""The API server, fan-out and the push worker together on a real 3-master Redis Cluster
(REDIS_CLUSTER=true): sign-up, follows, posts fanned out, feed pages (the page script on
the reader's node with the counters read node by node, and the general path: a rebuilt
timeline, a pull-tier author merged, deletes, unfollows), the ranked feed, likes in the
pages, rate limit
and idempotency, readiness, the ops stats with the cluster's masters, pushes, the
operator's tier commands, and a slot migrated while a reader's pages are read and
fan-out writes: every page answers, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio.cluster import RedisCluster

from core import keys, timelines
from core.clients import build_redis_cluster
from core.ids import IdGenerator
from core.metric_totals import counter_by, counter_total
from core.settings import Settings
from server.metrics import METRICS
from standins.apns import ApnsStandin
from standins.tls import LocalCA
from standins.webpush import WebPushStandin
from tests.support import standins
from tests.support.api import Client, MakeClient, User, error_of, follow, post, sign_up
from tests.support.cluster_ops import (
    begin_migration,
    finish_migration,
    masters_holding,
    migrate_keys,
    node_of,
    other_master,
)
from tests.support.env import run_module
from tests.support.ops import operator_auth
from tests.support.wait import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

standin_ca = standins.standin_ca
apns_standin = standins.apns_standin
webpush_standin = standins.webpush_standin


@dataclasses.dataclass
class System:
    api: Client
    settings: Settings
    cluster: RedisCluster  # the test's own client of the same cluster
    webpush: WebPushStandin

    def reads(self) -> dict[str, int]:
        """Feed pages served so far by source (redis, rebuild, postgres)."""
        return counter_by(self.api.app[METRICS].timeline_reads, "source")

    def general_pages(self) -> int:
        return counter_total(self.api.app[METRICS].feed_pages_general)


@pytest.fixture
async def system(
    cluster_settings: Settings,
    aiohttp_client: MakeClient,
    standin_ca: LocalCA,
    apns_standin: ApnsStandin,
    webpush_standin: WebPushStandin,
) -> AsyncIterator[System]:
    pointed = standins.push_settings(standin_ca, apns_standin)
    # A generous ranking budget: ranked pages here are about the cluster, not speed.
    on_cluster = dataclasses.replace(cluster_settings, ranking_budget_ms=5000)
    api, live = await standins.push_pipeline(
        on_cluster, pointed, ("apns", "webpush"), aiohttp_client
    )
    cluster = build_redis_cluster(live.redis_url)
    await cluster.initialize()
    yield System(api, live, cluster, webpush_standin)
    await cluster.aclose()


async def whole_feed(api: Client, user: User, limit: int = 5) -> list[dict[str, Any]]:
    """Every page of `user`'s feed, following the cursors."""
    posts: list[dict[str, Any]] = []
    query = f"/v1/feed?limit={limit}"
    while True:
        resp = await api.get(query, headers=user.auth)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        posts += page["posts"]
        if not page["has_more"]:
            return posts
        query = f"/v1/feed?limit={limit}&cursor={page['next_cursor']}"


def ids_of(posts: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in posts]


def newest_first(post_ids: set[str] | list[str]) -> list[str]:
    return sorted(post_ids, key=int, reverse=True)


async def feed_becomes(api: Client, user: User, expected: set[str], what: str) -> None:
    async def shown() -> bool:
        return ids_of(await whole_feed(api, user)) == newest_first(expected)

    await eventually(shown, seconds=30, what=what)


async def test_feeds_likes_deletes_unfollows_rebuilds_and_pull_tier_on_a_cluster(
    system: System,
) -> None:
    api, cluster = system.api, system.cluster
    reader = await sign_up(api)
    authors = [await sign_up(api) for _ in range(4)]
    for author in authors:
        await follow(api, reader, author)
    posted: dict[str, User] = {}
    for round_ in range(4):
        for author in authors:
            posted[await post(api, author, f"round {round_} by {author.handle}")] = author
    mine = await post(api, reader, "my own")
    expected = {*posted, mine}
    await feed_becomes(api, reader, expected, "every post fanned out into the feed")

    # The test's keys really live on all three masters: posts' bodies and counters
    # (read node by node by every page) and the users' timelines.
    post_keys = [k for p in expected for k in (keys.post_cache(int(p)), keys.post_counters(int(p)))]
    masters = {n.name for n in cluster.get_primaries()}
    assert len(masters) == 3
    assert await masters_holding(cluster, post_keys) == masters
    before, general = system.reads(), system.general_pages()
    await whole_feed(api, reader)
    after = system.reads()
    assert after.get("redis", 0) - before.get("redis", 0) == 4  # 17 posts, 5 a page
    assert system.general_pages() == general  # each page the script's and one read per node
    assert after.get("postgres", 0) == before.get("postgres", 0)  # never a fallback

    # A like shows in the pages at once (the counter is on the post's own node).
    liked = next(iter(posted))
    resp = await api.post(f"/v1/posts/{liked}/like", headers=reader.auth)
    assert resp.status == 200, await resp.text()
    counts = {p["id"]: p["counts"]["likes"] for p in await whole_feed(api, reader)}
    assert counts[liked] == 1 and sum(counts.values()) == 1

    # The ranked feed: its features read and its snapshot and impressions written through
    # the cluster client (keys of the reader's slot and of each post's), its later page
    # read back from the snapshot.
    resp = await api.get("/v1/feed?algorithm=ranked&limit=10", headers=reader.auth)
    ranked = await resp.json()
    assert resp.status == 200 and ranked["algorithm"] == "ranked", ranked
    assert ranked["has_more"]
    query = f"/v1/feed?algorithm=ranked&limit=10&cursor={ranked['next_cursor']}"
    later = await (await api.get(query, headers=reader.auth)).json()
    assert later["algorithm"] == "ranked", later
    assert sorted(ids_of(ranked["posts"]) + ids_of(later["posts"])) == sorted(expected)

    # A deleted post is dropped; an unfollowed author's posts too.
    deleted = next(p for p, a in posted.items() if a is authors[1])
    resp = await api.delete(f"/v1/posts/{deleted}", headers=authors[1].auth)
    assert resp.status in (200, 204), await resp.text()
    expected.discard(deleted)
    resp = await api.delete(f"/v1/users/{authors[2].id}/follow", headers=reader.auth)
    assert resp.status == 200, await resp.text()
    expected -= {p for p, a in posted.items() if a is authors[2]}
    assert ids_of(await whole_feed(api, reader)) == newest_first(expected)

    # A missing timeline is rebuilt from Postgres by the general path, on its node.
    await timelines.drop(cluster, int(reader.id))
    general = system.general_pages()
    rebuilds = system.reads().get("rebuild", 0)
    assert ids_of(await whole_feed(api, reader)) == newest_first(expected)
    assert system.reads().get("rebuild", 0) == rebuilds + 1
    assert system.general_pages() > general
    assert await cluster.exists(keys.timeline(int(reader.id)))

    # A pull-tier author (set by the operator command, on the cluster) is merged at read
    # time instead of fanned out.
    star = authors[0]
    done = run_module(system.settings, "fanout.admin", "tier", star.handle, "pull")
    assert done.returncode == 0, done.stderr
    done = run_module(system.settings, "fanout.admin", "thresholds", "--throttle-max", "500000")
    assert done.returncode == 0, done.stderr
    shown = run_module(system.settings, "fanout.admin", "show")
    assert shown.returncode == 0 and "throttled up to 500000" in shown.stdout, shown
    assert f"@{star.handle}: pull (forced)" in shown.stdout
    assert await cluster.hget(keys.FANOUT_CONFIG, "throttle_max") == b"500000"
    pulled = await post(api, star, "merged at read time")
    expected.add(pulled)
    await feed_becomes(api, reader, expected, "the pull-tier post merged into the feed")


async def test_rate_limit_and_idempotency_keys_on_a_cluster(
    system: System, db: asyncpg.Pool
) -> None:
    api = system.api
    author, fan = await sign_up(api), await sign_up(api)
    await follow(api, fan, author)
    headers = {**author.auth, "Idempotency-Key": "cluster-once"}
    first = await api.post("/v1/posts", json={"text": "once"}, headers=headers)
    again = await api.post("/v1/posts", json={"text": "once"}, headers=headers)
    assert first.status == again.status == 201
    post_id = (await first.json())["post_id"]
    assert (await again.json())["post_id"] == post_id
    await feed_becomes(api, fan, {post_id}, "the post fanned out once")

    ids = IdGenerator(1021)
    await db.executemany(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'filler')",
        [(ids.next_id(), int(author.id)) for _ in range(300)],
    )
    resp = await api.post("/v1/posts", json={"text": "one too many"}, headers=author.auth)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await error_of(resp))["code"] == "rate_limited"


async def test_readiness_ops_stats_and_pushes_on_a_cluster(system: System) -> None:
    api, settings = system.api, system.settings
    ready = await api.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["checks"]["redis"] == "ok", body

    async def every_service_reports() -> bool:
        resp = await api.get("/v1/ops/stats", headers=operator_auth(settings))
        assert resp.status == 200, await resp.text()
        stats = await resp.json()
        services = stats["services"]
        return all(services[s] for s in ("server", "fanout", "push"))

    # Each service writes its stats through its cluster client: its key, and the index,
    # live on whichever masters serve them.
    await eventually(every_service_reports, seconds=15, what="every service's stats")
    resp = await api.get("/v1/ops/stats", headers=operator_auth(settings))
    topology = (await resp.json())["redis"]
    assert topology["cluster"] is True
    assert len(topology["nodes"]) == 3
    assert all(n["up"] and n["slots"] > 0 for n in topology["nodes"])
    assert sum(n["slots"] for n in topology["nodes"]) == 16_384

    # Pushes: the window and dedupe keys of the push worker are on the cluster. Three
    # posts in one window wake the browser once; a like is one alert.
    reader, author = await sign_up(api), await sign_up(api)
    key = (await (await api.get("/v1/push/vapid-public-key")).json())["public_key"]
    sub = system.webpush.create_subscription(application_server_key=key)
    resp = await api.post(
        "/v1/devices", json={"kind": "webpush", "subscription": sub}, headers=reader.auth
    )
    assert resp.status == 201, await resp.text()
    await follow(api, reader, author)
    own = await post(api, reader, "mine")
    for i in range(3):
        await post(api, author, f"news {i}")
    resp = await api.post(f"/v1/posts/{own}/like", headers=author.auth)
    assert resp.status == 200
    await system.webpush.received.wait_for(2, timeout=30)
    await asyncio.sleep(1.5)  # a third push, if one were coming
    received = [r for r in system.webpush.received.items if r.endpoint == sub["endpoint"]]
    kinds = sorted(json.loads(r.plaintext)["kind"] for r in received)
    assert kinds == ["alert", "feed"]
    assert await system.cluster.exists(keys.push_feed_window(int(reader.id)))


async def test_a_slot_migrated_under_reads_and_fanout_loses_and_doubles_nothing(
    system: System,
) -> None:
    """The slot of a reader's timeline moves to another master the way `redis-cli
    --cluster reshard` moves it, while the reader's pages are read in a loop and authors
    post (fan-out writing the timeline). Every page answers from Redis (never the
    Postgres fallback), no page shows a post twice, no post once shown disappears, and
    at the end the feed holds every post exactly once."""
    api, cluster = system.api, system.cluster
    reader = await sign_up(api)
    authors = [await sign_up(api) for _ in range(3)]
    for author in authors:
        await follow(api, reader, author)
    posted: set[str] = set()
    for author in authors:
        posted.add(await post(api, author, "before"))
    await feed_becomes(api, reader, posted, "the first posts in the feed")

    fallbacks = system.reads().get("postgres", 0)
    stop = asyncio.Event()
    snapshots: list[list[str]] = []

    async def read_forever() -> None:
        while not stop.is_set():
            snapshots.append(ids_of(await whole_feed(api, reader, limit=3)))

    async def post_forever() -> None:
        turn = 0
        while not stop.is_set():
            posted.add(await post(api, authors[turn % 3], f"during {turn}"))
            turn += 1
            await asyncio.sleep(0.05)

    async def pages_read(n: int) -> None:
        target = len(snapshots) + n

        async def enough() -> bool:
            return len(snapshots) >= target

        await eventually(enough, seconds=30, what=f"{n} more whole feeds read")

    timeline = keys.timeline(int(reader.id))
    slot = cluster.keyslot(timeline)
    source = node_of(cluster, timeline)
    target = other_master(cluster, source)
    await cluster.config_resetstat(target_nodes=target)
    tasks = [asyncio.ensure_future(read_forever()), asyncio.ensure_future(post_forever())]
    try:
        await pages_read(3)
        await begin_migration(cluster, slot, source, target)
        await pages_read(3)  # MIGRATING: the keys still on the source
        started = time.monotonic()
        moved = await migrate_keys(cluster, slot, source, target)
        await pages_read(3)  # moved, the slot still the source's: ASK
        await finish_migration(cluster, slot, target)
        await pages_read(3)  # MOVED, then the new map
        assert moved >= 2, moved  # the timeline and the following cache at least
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert await cluster.execute_command("EXISTS", timeline, target_nodes=target) == 1
    # Pages were read while the keys sat on the target and the slot was still the
    # source's: redirected there with ASK (and ASKING), not served stale or from Postgres.
    stats = await cluster.info("commandstats", target_nodes=target)
    assert int(stats.get("cmdstat_asking", {}).get("calls", 0)) >= 3, stats
    await feed_becomes(api, reader, posted, "every post once after the migration")
    assert system.reads().get("postgres", 0) == fallbacks  # every page from Redis
    seen: set[str] = set()
    for snapshot in snapshots:
        assert len(snapshot) == len(set(snapshot)), snapshot  # nothing twice
        assert snapshot == newest_first(snapshot)
        assert seen <= set(snapshot), seen - set(snapshot)  # nothing once shown is lost
        seen = set(snapshot)
    final = ids_of(await whole_feed(api, reader))
    assert final == newest_first(posted) and len(final) == len(posted) > 6
