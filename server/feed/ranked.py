"""GET /v1/feed?algorithm=ranked: the home feed re-ranked by the learned model.

A first page reads the reader's newest candidates (server/feed/candidates.py: the
timeline and followed pull-tier authors, deleted posts and unfollowed authors dropped, as
ids, authors, counters and cached facts; no post bodies), scores them (ranking/),
snapshots the ranked list (ids and reasons) in Redis with a TTL and hydrates only the
posts it answers; later pages page through the snapshot by an opaque cursor (no
duplicate, no gap), dropping what was deleted or unfollowed since. A reader without a
timeline gets the chronological feed's general path, which rebuilds it. Ranking never fails a
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
from core.post_cache import TOMBSTONE, encode_counters
from core.settings import Settings
from core.stats import LatencyWindow
from ranking import scorer
from ranking.breaker import Breaker
from ranking.impressions import Impression, ImpressionLog
from ranking.model import SHIPPED_MODEL, Model, ModelHolder
from ranking.store import FeatureStore, ReaderFeatures, decayed
from server.context import ServerContext
from server.feed.candidates import CandidateReader, Known, Pool, Reader, facts_of
from server.feed.home import HomeFeed
from server.feed.hydrate import spliced
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
        self.candidates = CandidateReader(c, feed, s.feed_held_posts)
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
        ranked: list[scorer.Shown] = []
        bodies: list[tuple[int, bytes]] = []
        try:
            async with asyncio.timeout(self._budget):
                ranked, known = await self._rank(model, user)
                # Only the posts this page shows are hydrated (the rest: later pages).
                bodies = await self._hydrated(user, [r.id for r in ranked[:limit]], known)
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
        answered = {post_id for post_id, _ in bodies}
        shown = [r for r in ranked[:limit] if r.id in answered]
        try:  # the snapshot and the impressions: one round trip
            stored = (keys.ranking_snapshot(user, token), snapshot, self._ttl)
            await self.store.store_page(self._feed.lean, user, stored, [r.id for r in shown])
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
        reasons = {r.id: r.reason for r in shown}
        return _body([(b, reasons[i]) for i, b in bodies], token, limit, more)

    async def _hydrated(
        self, user: int, ids: list[int], known: dict[int, Known] | None
    ) -> list[tuple[int, bytes]]:
        """The JSON of these posts, in order, counts included: their cached bodies with the
        counts the candidates' read just found (one MGET); the rest (no cached body, or
        from the general path) as the chronological feed hydrates them."""
        if known is None:
            return await self._feed.visible(user, ids)
        values = await self._feed.lean.mget([keys.post_cache(i) for i in ids])
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for post_id, body in zip(ids, values, strict=True):
            if body is None:
                missing.append(post_id)
            elif body != TOMBSTONE:  # deleted meanwhile otherwise
                fact, likes, reposts, replies = known[post_id]
                found[post_id] = spliced(
                    body, encode_counters(fact.author, likes, reposts, replies)
                )
        if missing:
            found.update(await self._feed.visible(user, missing))
        return [(i, found[i]) for i in ids if i in found]

    async def _rank(
        self, model: Model, user: int
    ) -> tuple[list[scorer.Shown], dict[int, Known] | None]:
        """Every candidate, best first, and the candidates' facts and counts when read."""
        now = time.time()
        oldest = min_id_for_ms(int(now * 1000) - self._window_ms)
        pool = await self.candidates.read(user, self._candidates, oldest)
        if pool is None:  # no timeline: the chronological feed's read rebuilds it
            pool = await self._general(user, oldest)
            columns = pool.columns
            authors = list(set(columns.authors))
            features = await self.store.read(user, authors, columns.ids, pool.engaged, now)
        else:  # the reader's own features came with the candidates; who engaged: here
            columns, reader = pool.columns, pool.reader
            engagers = await self.store.engagers(self._feed.lean, pool.engaged)
            affinity = decayed(reader.affinity, now)
            features = ReaderFeatures(affinity, engagers, reader.seen)
        if not columns.ids:
            return [], None
        followees = pool.reader.followees
        ranked = scorer.rank_columns(model, user, columns, features, followees, now)
        users = list({r.reason.user for r in ranked if r.reason.user is not None})
        handles: dict[int, str] = {}
        if users:
            rows = await self._c.db.fetch(
                "SELECT id, handle FROM users WHERE id = ANY($1::bigint[])", users
            )
            handles = {r["id"]: r["handle"] for r in rows}
        shown = _shown(ranked, dict(zip(columns.ids, pool.handles, strict=True)), handles)
        return shown, pool.known

    async def _general(self, user: int, oldest: int) -> Pool:
        """The candidates through the chronological feed's general path, bodies decoded."""
        page = await self._feed.page(user, None, self._candidates)
        candidates = _decoded(page.ids, page.posts, oldest)
        for c in candidates:
            self.candidates.facts.put(c.id, facts_of(c.post))
        engaged = [c.id for c in candidates if _engaged(c.post)]
        reader = Reader(await self._feed.following.fill(user), {}, set())
        columns = scorer.Columns.of(candidates)
        return Pool(columns, [c.handle for c in candidates], engaged, reader)

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


def _decoded(ids: list[int], posts: list[bytes], oldest: int) -> list[scorer.Candidate]:
    """The page's posts with ids from `oldest` up, decoded."""
    bodies = [body for post_id, body in zip(ids, posts, strict=True) if post_id >= oldest]
    kept = [post_id for post_id in ids if post_id >= oldest]
    # One decode of them all: about a sixth cheaper than one call per post.
    decoded = orjson.loads(b"[" + b",".join(bodies) + b"]") if bodies else []
    return [
        scorer.Candidate(post_id, int(post["author"]["id"]), post["author"]["handle"], post)
        for post_id, post in zip(kept, decoded, strict=True)
    ]


def _shown(
    ranked: list[scorer.Ranked], author_handle: dict[int, str], handles: dict[int, str]
) -> list[scorer.Shown]:
    # A reason naming nobody but the author ("new from @bo") is worded once per author.
    worded: dict[tuple[str, str], str] = {}
    text = scorer.reason_text
    shown = []
    for r in ranked:
        reason = r.reason
        if reason.user is None:
            key = (reason.kind, author_handle[r.id])
            said = worded.get(key)
            if said is None:
                said = worded[key] = text(reason, key[1], handles)
        else:
            said = text(reason, author_handle[r.id], handles)
        shown.append(scorer.Shown(r.id, said, r.features))
    return shown


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
