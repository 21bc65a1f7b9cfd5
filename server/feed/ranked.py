"""GET /v1/feed?algorithm=ranked: the home feed re-ranked by the learned model.

A first page takes the newest candidates of the chronological feed (HomeFeed.page: the
timeline and followed pull-tier authors, deleted posts and unfollowed authors already
dropped), scores them (ranking/), snapshots the ranked list in Redis with a TTL and
answers its first posts; later pages page through the snapshot by an opaque cursor (no
duplicate, no gap), dropping what was deleted or unfollowed since. Ranking never fails a
request: no model, a ranker error, a page over RANKING_BUDGET_MS or an open breaker give
None, and the handler serves the chronological page marked as such.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from core import keys
from core.ids import min_id_for_ms
from core.settings import Settings
from core.stats import LatencyWindow
from ranking import scorer
from ranking.breaker import Breaker
from ranking.impressions import Impression, ImpressionLog
from ranking.model import SHIPPED_MODEL, Model, ModelHolder
from ranking.store import FeatureStore
from server.context import ServerContext
from server.feed.home import HomeFeed
from server.http import validation as v
from server.metrics import ServerMetrics

log = logging.getLogger(__name__)

CURSOR_KIND = "ranked"  # encode_cursor("ranked", token, offset)


class RankedFeed:
    def __init__(self, c: ServerContext, feed: HomeFeed, metrics: ServerMetrics) -> None:
        s: Settings = c.settings
        self._c = c
        self._feed = feed
        self._metrics = metrics
        path = Path(s.ranking_model_path) if s.ranking_model_path else SHIPPED_MODEL
        self.models = ModelHolder(path)
        self.models.current()  # loaded (and logged) at start, not by the first request
        self.store = FeatureStore(c.redis)
        self.breaker = Breaker(s.ranking_breaker_failures, s.ranking_breaker_seconds)
        self._budget = s.ranking_budget_ms / 1000
        self._candidates = s.ranking_candidates
        self._window_ms = s.ranking_window_hours * 3_600_000
        self._ttl = s.ranking_snapshot_seconds
        # Written by a supervised task of the API server (server/app.py).
        self.impressions = (
            ImpressionLog(c.db, s.ranking_impressions_days) if s.ranking_log_impressions else None
        )
        # Recent ranking times for the ops dashboard's p50/p99 (server/stats.py).
        self.latency = LatencyWindow()

    async def page(self, user: int, cursor: tuple[int, ...] | None, limit: int) -> bytes | None:
        """A ranked page's body, or None: serve the chronological page instead."""
        if cursor is not None:
            try:
                body = await self._later(user, cursor[0], cursor[1], limit)
            except Exception as exc:  # noqa: BLE001 - ranking never fails a feed page
                log.warning("ranked page of %d from its snapshot failed: %r", user, exc)
                self._fallback("error")
                return None
            if body is not None:
                self._metrics.ranked_pages.labels("ranked", "snapshot").inc()
                return body
            # The snapshot expired: a fresh ranked list, as on a refresh.
        return await self._first(user, limit)

    def _fallback(self, cause: str) -> None:
        self._metrics.ranked_pages.labels("chronological", cause).inc()

    async def _first(self, user: int, limit: int) -> bytes | None:
        if not self.breaker.allow():
            self._fallback("breaker_open")
            return None
        model = self.models.current()
        if model is None:
            self._fallback("no_model")
            return None
        started = time.perf_counter()
        cause = "error"
        ranked: list[scorer.Shown] | None = None
        try:
            async with asyncio.timeout(self._budget):
                ranked = await self._rank(model, user)
            cause = "ok"
        except TimeoutError:
            cause = "budget"
        except Exception as exc:  # noqa: BLE001 - ranking never fails a feed page
            log.warning("ranking the feed of %d failed: %r", user, exc)
        elapsed = time.perf_counter() - started
        self._metrics.ranker_seconds.observe(elapsed)
        self.latency.add(elapsed * 1000)
        if cause == "ok" and elapsed > self._budget:
            cause = "budget"  # scoring itself (no await) ran past the deadline
        if cause != "ok":
            self.breaker.failed()
            self._fallback(cause)
            return None
        self.breaker.succeeded()
        if not ranked:
            self._fallback("no_candidates")
            return None
        token = secrets.randbits(48)
        snapshot = orjson.dumps([[r.id, r.reason] for r in ranked])
        shown = ranked[:limit]
        try:  # the snapshot and the impressions: one round trip
            pipe = self.store.pipeline()
            pipe.set(keys.ranking_snapshot(user, token), snapshot, ex=self._ttl)
            self.store.queue_impressions(pipe, user, [r.id for r in shown])
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - ranking never fails a feed page
            log.warning("ranked snapshot of %d not stored: %r", user, exc)
            self._fallback("error")
            return None
        if self.impressions is not None:
            self.impressions.add(
                [
                    Impression(user, r.id, token, position, model.version, r.features)
                    for position, r in enumerate(shown)
                ]
            )
        self._metrics.ranked_pages.labels("ranked", "ok").inc()
        more = len(ranked) > limit
        return _body([(r.body, r.reason) for r in shown], token, limit, more)

    async def _rank(self, model: Model, user: int) -> list[scorer.Shown]:
        """Every candidate, best first."""
        page = await self._feed.page(user, None, self._candidates)
        now = time.time()
        candidates, bodies = _candidates(page.ids, page.posts, int(now * 1000) - self._window_ms)
        if not candidates:
            return []
        # Only posts someone liked or reposted can have engagers to look up.
        engaged = [c.id for c in candidates if _engaged(c.post)]
        authors = list({c.author for c in candidates})
        # Whom the reader follows (the feed's following cache) comes in the same round trip.
        features = await self.store.read(user, authors, list(bodies), engaged, now, following=True)
        followees = await self._followees(user, features.following or set())
        ranked = scorer.rank(model, user, candidates, features, followees, now)
        users = list({r.reason.user for r in ranked if r.reason.user is not None})
        handles: dict[int, str] = {}
        if users:
            rows = await self._c.db.fetch(
                "SELECT id, handle FROM users WHERE id = ANY($1::bigint[])", users
            )
            handles = {r["id"]: r["handle"] for r in rows}
        return _shown(ranked, candidates, bodies, handles)

    async def _followees(self, user: int, members: set[int]) -> set[int]:
        """From the feed's following cache (keys.following: always holds "0" once filled;
        `members` as read), else from Postgres, filling it."""
        if members:
            return members - {0}
        return await self._feed.following.fill(user)

    async def _later(self, user: int, token: int, offset: int, limit: int) -> bytes | None:
        raw = await self._c.redis.get(keys.ranking_snapshot(user, token))
        if raw is None:
            return None
        items: list[list[int | str]] = orjson.loads(raw)
        window = items[offset : offset + limit]
        reasons = {int(post_id): str(reason) for post_id, reason in window}
        visible = await self._feed.visible(user, list(reasons))
        await self.store.log_impressions(user, [post_id for post_id, _ in visible])
        more = offset + limit < len(items)
        return _body([(b, reasons[i]) for i, b in visible], token, offset + limit, more)


def _candidates(
    ids: list[int], posts: list[bytes], oldest_ms: int
) -> tuple[list[scorer.Candidate], dict[int, bytes]]:
    """The page's posts no older than `oldest_ms`, decoded, and their bodies by id."""
    floor = min_id_for_ms(oldest_ms)  # an id below it was made before oldest_ms
    bodies = {post_id: body for post_id, body in zip(ids, posts, strict=True) if post_id >= floor}
    # One decode of them all: about a sixth cheaper than one call per post.
    decoded = orjson.loads(b"[" + b",".join(bodies.values()) + b"]") if bodies else []
    candidates = [
        scorer.Candidate(post_id, int(post["author"]["id"]), post["author"]["handle"], post)
        for post_id, post in zip(bodies, decoded, strict=True)
    ]
    return candidates, bodies


def _shown(
    ranked: list[scorer.Ranked],
    candidates: list[scorer.Candidate],
    bodies: dict[int, bytes],
    handles: dict[int, str],
) -> list[scorer.Shown]:
    author_handle = {c.id: c.handle for c in candidates}
    text = scorer.reason_text
    return [
        scorer.Shown(r.id, bodies[r.id], text(r.reason, author_handle[r.id], handles), r.features)
        for r in ranked
    ]


def _engaged(post: dict[str, Any]) -> bool:
    counts = post.get("counts") or {}
    return bool(counts.get("likes") or counts.get("reposts"))


def _body(posts: list[tuple[bytes, str]], token: int, offset: int, more: bool) -> bytes:
    """Posts are JSON already: each gets its reason spliced in before its closing brace."""
    joined = b",".join(
        body[:-1] + b',"reason":' + orjson.dumps(reason) + b"}" for body, reason in posts
    )
    tail = {
        "next_cursor": v.encode_cursor(CURSOR_KIND, token, offset) if more else None,
        "has_more": more,
        "algorithm": "ranked",
    }
    return b'{"posts":[' + joined + b"]," + orjson.dumps(tail)[1:]


RANKED = web.AppKey("ranked_feed", RankedFeed)
