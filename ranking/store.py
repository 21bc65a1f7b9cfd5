"""The feature store: the few per-reader and per-post signals the ranker needs, in Redis,
kept current from the event stream (fanout/event_handlers.py calls `record_engagement`) and by
ranked pages (`log_impressions`). Counters and post bodies it does not copy: those come
hydrated with the candidates. It never decides an order (ranking/scorer.py does)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from core import keys
from core.lean_redis import Arg, LeanClient
from ranking.features import AFFINITY_HALF_LIFE_DAYS, ENGAGEMENT_WEIGHT

Redis = aioredis.Redis | RedisCluster
Pipeline = aioredis.client.Pipeline | ClusterPipeline
# Affinity is kept as weight * 2^((t - EPOCH) / half-life): adding an engagement is one
# ZINCRBY and decay is one multiplication when read. The exponent stays far below a
# double's range for decades (about 52 per year at a 7-day half-life).
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HALF_LIFE = AFFINITY_HALF_LIFE_DAYS * 86_400
AFFINITY_TTL = 60 * 86_400
ENGAGERS_CAP = 200
ENGAGERS_TTL = 7 * 86_400
SEEN_CAP = 1000
SEEN_TTL = 7 * 86_400


def _growth(at: float) -> float:
    return math.pow(2.0, (at - EPOCH) / HALF_LIFE)


def decayed(kept: dict[int, float], at: float) -> dict[int, float]:
    """Affinity scores as kept in Redis (read by the caller) as of `at`, as read() gives
    them."""
    decay = 1.0 / _growth(at)
    return {a: v * decay for a, v in kept.items() if v}


@dataclass(frozen=True, slots=True)
class ReaderFeatures:
    affinity: dict[int, float]  # author -> decayed engagement count
    engagers: dict[int, list[int]]  # post -> who liked or reposted it lately
    seen: set[int]  # posts shown to the reader on ranked pages
    # read(following=True): the following cache's members as ids ("0" included: the
    # cache exists; empty: it does not), else None.
    following: set[int] | None = None


class FeatureStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def record_engagement(
        self, kind: str, actor: int, author: int, post_id: int | None, at: float | None = None
    ) -> None:
        """A like, reply or repost of `author`'s post `post_id` by `actor` (the engaged
        post: for a repost, the original). Other kinds are not features."""
        weight = ENGAGEMENT_WEIGHT.get(kind)
        if weight is None or actor == author:
            return
        at = time.time() if at is None else at
        pipe = self._redis.pipeline(transaction=False)
        affinity = keys.ranking_affinity(actor)
        pipe.zincrby(affinity, weight * _growth(at), str(author))
        pipe.expire(affinity, AFFINITY_TTL)
        if kind != "reply" and post_id is not None:
            engagers = keys.ranking_engagers(post_id)
            pipe.zadd(engagers, {str(actor): int(at * 1000)})
            pipe.zremrangebyrank(engagers, 0, -ENGAGERS_CAP - 1)
            pipe.expire(engagers, ENGAGERS_TTL)
            # A post liked or reposted is one the reader has seen: demoted like the rest.
            self._seen(pipe, actor, [post_id], int(at * 1000))
        await pipe.execute()

    def pipeline(self) -> Pipeline:
        return self._redis.pipeline(transaction=False)

    async def read(
        self,
        reader: int,
        authors: list[int],
        posts: list[int],
        engaged: list[int],
        at: float | None = None,
        following: bool = False,
    ) -> ReaderFeatures:
        """Affinity to `authors`, which of `posts` were seen, who engaged with `engaged`
        (the posts with likes or reposts), and with `following` the members of the
        reader's following cache (keys.following): one pipelined round trip (per node on
        a cluster)."""
        at = time.time() if at is None else at
        pipe = self.pipeline()
        if following:
            pipe.smembers(keys.following(reader))
        if authors:
            pipe.zmscore(keys.ranking_affinity(reader), [str(a) for a in authors])
        if posts:
            members = [keys.timeline_member(p).decode() for p in posts]
            pipe.zmscore(keys.ranking_seen(reader), members)
        for post_id in engaged:
            pipe.zrange(keys.ranking_engagers(post_id), 0, -1)
        replies = list(await pipe.execute())
        followed = {int(m) for m in replies.pop(0)} if following else None
        decay = 1.0 / _growth(at)
        affinity: dict[int, float] = {}
        if authors:
            raw = replies.pop(0)
            affinity = {a: float(v) * decay for a, v in zip(authors, raw, strict=True) if v}
        seen: set[int] = set()
        if posts:
            raw = replies.pop(0)
            seen = {p for p, v in zip(posts, raw, strict=True) if v is not None}
        engagers = {
            p: [int(u) for u in users] for p, users in zip(engaged, replies, strict=True) if users
        }
        return ReaderFeatures(affinity, engagers, seen, followed)

    @staticmethod
    async def engagers(lean: LeanClient, posts: list[int]) -> dict[int, list[int]]:
        """read()'s `engagers` alone, over the feed's lean client (a ranked first page's
        read): one pipelined write per node, not a redis-py pipeline's CPU."""
        if not posts:
            return {}
        replies = await lean.commands([("ZRANGE", keys.ranking_engagers(p), 0, -1) for p in posts])
        found = zip(posts, replies, strict=True)
        return {p: [int(u) for u in users] for p, users in found if users}

    @staticmethod
    async def store_page(
        lean: LeanClient,
        reader: int,
        snapshot: tuple[str, bytes, int],
        shown: list[int],
        at: float | None = None,
    ) -> None:
        """A ranked first page's writes over the lean client, in one round trip: its
        snapshot (key, value, TTL) and the impressions of the posts it shows. Each is safe
        to send twice (the lean client resends a call once when its link drops)."""
        key, value, ttl = snapshot
        calls: list[Sequence[Arg]] = [("SET", key, value, "EX", ttl)]
        if shown:
            seen = keys.ranking_seen(reader)
            stamp = int((time.time() if at is None else at) * 1000)
            scored: list[Arg] = []
            for post_id in shown:
                scored += [stamp, keys.timeline_member(post_id)]
            calls += [
                ("ZADD", seen, *scored),
                ("ZREMRANGEBYRANK", seen, 0, -SEEN_CAP - 1),
                ("EXPIRE", seen, SEEN_TTL),
            ]
        await lean.commands(calls)

    async def log_impressions(self, reader: int, posts: list[int], at: float | None = None) -> None:
        if not posts:
            return
        pipe = self.pipeline()
        self._seen(pipe, reader, posts, int((time.time() if at is None else at) * 1000))
        await pipe.execute()

    @staticmethod
    def _seen(pipe: Pipeline, reader: int, posts: list[int], stamp: int) -> None:
        seen = keys.ranking_seen(reader)
        pipe.zadd(seen, {keys.timeline_member(p).decode(): stamp for p in posts})
        pipe.zremrangebyrank(seen, 0, -SEEN_CAP - 1)
        pipe.expire(seen, SEEN_TTL)
