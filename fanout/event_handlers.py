"""What fan-out does with each event. Business decisions live here (tiers, who gets what);
Redis writes go through TimelineWriter, Kafka input and commits through the consumer.

Every handler is idempotent: the consumer may deliver an event again after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from core import events, keys, post_cache
from core.ids import IdGenerator, id_timestamp_ms
from core.media_urls import media_base_url
from core.notification_view import notification_view
from core.postview import fetch_rows, full_post
from core.replica import Reader
from core.settings import Settings
from core.tiers import Tier, TierPolicy
from core.topics import Topics
from fanout.followers import Followers, all_follower_batches, follower_batches, followers_of_many
from fanout.metrics import FanoutMetrics
from fanout.writer import TimelineWriter
from ranking.store import FeatureStore

log = logging.getLogger(__name__)

BACKFILL_POSTS = 50
# Follower batches in flight at once: 2 overlaps Postgres, Python and Redis work; more
# only queues script calls inside Redis, which runs one at a time.
PIPELINE_DEPTH = 2
TIER_TTL = 2.0
SMALL_GROUP_WRITES = 20_000  # follower writes per micro-batch of small authors' posts
TIER_CACHE_SIZE = 100_000
CHECKPOINT_TTL = 7 * 24 * 3600
ALERT_TEXT = {
    "like": "@{actor} liked your post",
    "reply": "@{actor} replied to you",
    "repost": "@{actor} reposted your post",
    "mention": "@{actor} mentioned you",
    "follow": "@{actor} followed you",
}


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    db: asyncpg.Pool
    reads: Reader  # follower pages: the read replica when there is one (core/replica.py)
    redis: aioredis.Redis | RedisCluster
    writer: TimelineWriter
    producer: AIOKafkaProducer
    topics: Topics
    ids: IdGenerator
    policy: TierPolicy
    metrics: FanoutMetrics

    @property
    def media_base(self) -> str:
        return media_base_url(self.settings)


class Throttle:
    """Token bucket in timeline writes per second for one throttled-tier fan-out."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._started = time.monotonic()
        self._spent = 0

    async def spend(self, writes: int) -> None:
        self._spent += writes
        ahead = self._spent / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)


class Handlers:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._tiers: dict[int, tuple[float, Tier, int]] = {}
        self._withdrawn: set[int] = set()
        self._features = FeatureStore(deps.redis)  # the ranked feed's signals

    async def handle(self, event: events.Event) -> None:
        self.d.metrics.events.labels(event.TYPE).inc()
        if isinstance(event, events.PostCreated):
            await self.post_created(event)
        elif isinstance(event, events.PostDeleted):
            await self.post_deleted(event)
        elif isinstance(event, events.FollowCreated):
            await self.follow_created(event)
        elif isinstance(event, events.FollowRemoved):
            await self.follow_removed(event)
        elif isinstance(event, events.Engagement):
            await self.engagement(event)
        else:
            log.debug("ignoring %s", event.TYPE)

    async def _tier(self, author_id: int) -> tuple[Tier, int]:
        """Cached for TIER_TTL: the consumer asks (is_heavy) right before the handler does,
        and a tier changes on a scale of minutes, not milliseconds."""
        now = time.monotonic()
        cached = self._tiers.get(author_id)
        if cached is not None and now - cached[0] < TIER_TTL:
            return cached[1], cached[2]
        row = await self.d.db.fetchrow(
            "SELECT follower_count, fanout_tier FROM users WHERE id = $1", author_id
        )
        if row is None:
            return Tier.PUSH, 0
        thresholds = await self.d.policy.thresholds()
        tier = thresholds.tier(row["follower_count"], row["fanout_tier"])
        if len(self._tiers) >= TIER_CACHE_SIZE:
            self._tiers.clear()
        self._tiers[author_id] = (now, tier, row["follower_count"])
        return tier, row["follower_count"]

    async def is_heavy(self, event: events.Event) -> bool:
        """A post of a throttled-tier author: fanned out in the background, so it cannot
        hold up the other authors' posts on its partition."""
        if not isinstance(event, events.PostCreated):
            return False
        tier, _ = await self._tier(event.author_id)
        return tier is Tier.THROTTLE

    @contextlib.contextmanager
    def withdrawing(self, post_id: int) -> Iterator[None]:
        """While this is open, a fan-out of the post under way stops after the batches it
        has in flight (the post was deleted; the consumer then applies the delete)."""
        self._withdrawn.add(post_id)
        try:
            yield
        finally:
            self._withdrawn.discard(post_id)

    # -- posts -------------------------------------------------------------------------

    async def small_posts(self, batch: list[events.PostCreated]) -> set[int]:
        """Posts of push-tier authors with fewer followers than one batch, delivered
        together: a few queries and one pipelined Redis round trip per group instead of
        about ten round trips per post. Returns the post ids taken care of; the others
        (other tiers, more followers than follower_count said, a group that failed) go
        the one-by-one way (post_created), which retries and dead-letters."""
        d = self.d
        unique = list({e.post_id: e for e in batch}.values())  # a replayed duplicate
        rows = await d.db.fetch(
            "SELECT id, follower_count, fanout_tier FROM users WHERE id = ANY($1::bigint[])",
            list({e.author_id for e in unique}),
        )
        thresholds = await d.policy.thresholds()
        counts = {
            r["id"]: r["follower_count"]
            for r in rows
            if thresholds.tier(r["follower_count"], r["fanout_tier"]) is Tier.PUSH
            and r["follower_count"] < d.settings.fanout_batch_size
        }
        groups: list[list[events.PostCreated]] = [[]]
        writes = 0
        for event in (e for e in unique if e.author_id in counts):
            if writes >= SMALL_GROUP_WRITES:
                groups.append([])
                writes = 0
            groups[-1].append(event)
            writes += counts[event.author_id]
        handled: set[int] = set()
        for group in filter(None, groups):
            try:
                handled |= await self._small_group(group)
            except Exception as exc:  # noqa: BLE001 - these posts go one by one instead
                # And so do the groups after it: delivered now, they would overtake these
                # posts of the same authors (Redis back between two groups), and a client
                # that saw the newer post resumes after it, past the older one.
                log.warning("grouped delivery of %d posts failed (%r)", len(group), exc)
                break
        return handled

    async def _small_group(self, group: list[events.PostCreated]) -> set[int]:
        d = self.d
        started = time.monotonic()
        followers = await followers_of_many(
            d.reads,
            list({e.author_id for e in group}),
            d.settings.fanout_active_days,
            d.settings.fanout_batch_size,
        )
        group = [e for e in group if e.author_id in followers]
        posts = {
            r["id"]: r for r in await fetch_rows(d.db, [e.post_id for e in group], d.media_base)
        }
        live = [e for e in group if e.post_id in posts and posts[e.post_id]["deleted_at"] is None]
        payloads = [events.live_post(full_post(posts[e.post_id])) for e in live]
        results = await d.writer.add_many(
            [
                (e.post_id, p, followers[e.author_id].ids, followers[e.author_id].with_device)
                for e, p in zip(live, payloads, strict=True)
            ],
            [(e.author_id, e.post_id) for e in live],
        )
        await self._send_push_jobs(
            [
                job
                for event, result in zip(live, results, strict=True)
                for job in _feed_jobs(event, result.offline)
            ]
        )
        # Counted once delivered: a group that fails part-way is counted by post_created.
        now = time.time()
        d.metrics.events.labels(events.PostCreated.TYPE).inc(len(group))
        for event, result in zip(live, results, strict=True):
            d.metrics.timeline_writes.inc(result.written)
            d.metrics.batches.labels(Tier.PUSH.value).inc()
            d.metrics.live_publishes.inc(result.published)
            d.metrics.post_to_timeline.observe(
                max(0.0, now - id_timestamp_ms(event.post_id) / 1000)
            )
        log.info(
            "%d posts of %d authors fanned out together (%d timelines written) in %.1f ms",
            len(group),
            len({e.author_id for e in group}),
            sum(r.written for r in results),
            (time.monotonic() - started) * 1000,
        )
        return {e.post_id for e in group}

    async def post_created(self, event: events.PostCreated) -> None:
        rows = await fetch_rows(self.d.db, [event.post_id], self.d.media_base)
        if not rows or rows[0]["deleted_at"] is not None:
            return  # deleted before we got to it: nothing to deliver
        started = time.monotonic()
        payload = events.live_post(full_post(rows[0]))  # serialized once for everyone
        tier, followers = await self._tier(event.author_id)
        # The author's own timeline (the API did it too; this covers Redis being down then).
        await self.d.writer.add_posts(event.author_id, [event.post_id])
        if tier is Tier.PULL:
            await self.d.writer.publish(keys.author_channel(event.author_id), payload)
            self.d.metrics.live_publishes.inc()
        else:
            await self._push_to_followers(event, payload, tier)
        self.d.metrics.post_to_timeline.observe(
            max(0.0, time.time() - id_timestamp_ms(event.post_id) / 1000)
        )
        log.info(
            "post %d by %d fanned out (%s tier, %d followers) in %.1f ms",
            event.post_id,
            event.author_id,
            tier,
            followers,
            (time.monotonic() - started) * 1000,
        )

    async def _push_to_followers(
        self, event: events.PostCreated, payload: bytes, tier: Tier
    ) -> None:
        """Batches are pipelined: while Redis runs one batch's script, Postgres reads the
        next page and the next script call is packed and queued (up to PIPELINE_DEPTH in
        flight). Checkpoints still advance strictly in order, after a batch and its push
        jobs are done, so a crash resumes before any batch that might be incomplete
        (replaying it is idempotent)."""
        d = self.d
        checkpoint = keys.fanout_checkpoint(event.post_id)
        resume = int(await d.redis.get(checkpoint) or 0)
        saved = resume > 0
        throttle = Throttle(d.settings.fanout_throttle_rate) if tier is Tier.THROTTLE else None
        in_flight: deque[tuple[asyncio.Task[None], int | None]] = deque()
        batches = follower_batches(
            d.reads,
            event.author_id,
            resume,
            d.settings.fanout_batch_size,
            d.settings.fanout_active_days,
        )
        try:
            async for batch in batches:
                if event.post_id in self._withdrawn:
                    log.info("post %d deleted during its fan-out: stopped", event.post_id)
                    break
                task = asyncio.create_task(self._deliver(event, payload, tier, batch))
                # Only a full batch can have a next one: a one-batch fan-out (most posts)
                # has nothing to resume, so it skips the SET and the DEL.
                full = len(batch.ids) == d.settings.fanout_batch_size
                saved = saved or full
                in_flight.append((task, batch.ids[-1] if full else None))
                if len(in_flight) >= PIPELINE_DEPTH:
                    await self._settle(in_flight.popleft(), checkpoint)
                if throttle is not None:
                    await throttle.spend(len(batch.ids))
            while in_flight:
                await self._settle(in_flight.popleft(), checkpoint)
        finally:
            for task, _ in in_flight:  # an error or a cancel: stop what is still running
                task.cancel()
            await asyncio.gather(*(task for task, _ in in_flight), return_exceptions=True)
            await batches.aclose()
        if saved:
            await d.redis.delete(checkpoint)

    async def _deliver(
        self, event: events.PostCreated, payload: bytes, tier: Tier, batch: Followers
    ) -> None:
        d = self.d
        result = await d.writer.add(event.post_id, payload, batch.ids, batch.with_device)
        d.metrics.timeline_writes.inc(result.written)
        d.metrics.batches.labels(tier.value).inc()
        d.metrics.live_publishes.inc(result.published)
        await self._send_push_jobs(_feed_jobs(event, result.offline))

    async def _settle(
        self, delivery: tuple[asyncio.Task[None], int | None], checkpoint: str
    ) -> None:
        task, last = delivery
        await task
        if last is not None:
            # Progress survives a crash: a restarted worker resumes after this follower.
            await self.d.redis.set(checkpoint, last, ex=CHECKPOINT_TTL)

    async def _send_push_jobs(self, jobs: list[events.PushJob]) -> None:
        futures = [
            await self.d.producer.send(
                self.d.topics.push, events.encode(job), key=str(job.user_id).encode()
            )
            for job in jobs
        ]
        await asyncio.gather(*futures)
        for job in jobs:
            self.d.metrics.push_jobs.labels(job.kind).inc()

    async def post_deleted(self, event: events.PostDeleted) -> None:
        d = self.d
        payload = events.live_delete(event.post_id)
        await post_cache.tombstone(d.redis, event.post_id)
        await d.writer.remove_posts(event.author_id, [event.post_id])
        tier, _ = await self._tier(event.author_id)
        if tier is Tier.PULL:
            await d.writer.publish(keys.author_channel(event.author_id), payload)
            return
        removed = 0
        batch_size = d.settings.fanout_batch_size
        async for batch in all_follower_batches(d.reads, event.author_id, batch_size):
            removed += await d.writer.remove(event.post_id, payload, batch)
        log.info("post %d removed from %d timelines", event.post_id, removed)

    # -- follows -----------------------------------------------------------------------

    async def follow_created(self, event: events.FollowCreated) -> None:
        tier, _ = await self._tier(event.followee_id)
        if tier is Tier.PULL:
            return  # merged at read time
        active = await self.d.db.fetchval(
            "SELECT last_active_at > now() - make_interval(days => $2) FROM users WHERE id = $1",
            event.follower_id,
            self.d.settings.fanout_active_days,
        )
        if not active:
            return  # same rule as posts: their timeline is rebuilt when they return
        rows = await self.d.db.fetch(
            "SELECT id FROM posts WHERE author_id = $1 AND deleted_at IS NULL "
            "ORDER BY id DESC LIMIT $2",
            event.followee_id,
            BACKFILL_POSTS,
        )
        added = await self.d.writer.add_posts(event.follower_id, [r["id"] for r in rows])
        self.d.metrics.timeline_writes.inc(added)

    async def follow_removed(self, event: events.FollowRemoved) -> None:
        still = await self.d.db.fetchval(
            "SELECT true FROM follows WHERE follower_id = $1 AND followee_id = $2",
            event.follower_id,
            event.followee_id,
        )
        if still:
            return  # followed again since: keep the posts
        rows = await self.d.db.fetch(
            "SELECT id FROM posts WHERE author_id = $1 ORDER BY id DESC LIMIT $2",
            event.followee_id,
            self.d.settings.timeline_cap,
        )
        await self.d.writer.remove_posts(event.follower_id, [r["id"] for r in rows])

    # -- engagement --------------------------------------------------------------------

    async def engagement(self, event: events.Engagement) -> None:
        d = self.d
        row = await d.db.fetchrow(
            "WITH added AS ("
            "  INSERT INTO notifications (id, user_id, kind, actor_id, post_id)"
            "  VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id, created_at)"
            " SELECT a.id, a.created_at, u.handle, u.display_name"
            "   FROM added a JOIN users u ON u.id = $4",
            d.ids.next_id(),
            event.recipient_id,
            event.kind,
            event.actor_id,
            event.post_id,
        )
        if row is None:
            return  # already notified (replay) or a user vanished
        # Once per engagement, like the notification: a replay adds no affinity twice.
        await self._features.record_engagement(
            event.kind, event.actor_id, event.recipient_id, event.post_id
        )
        notification = notification_view(
            notification_id=row["id"],
            kind=event.kind,
            actor_id=event.actor_id,
            actor_handle=row["handle"],
            actor_display_name=row["display_name"],
            post_id=event.post_id,
            created_at=row["created_at"],
        )
        if await d.redis.exists(keys.presence(event.recipient_id)):
            await d.writer.publish(
                keys.user_channel(event.recipient_id), events.live_notification(notification)
            )
            d.metrics.live_publishes.inc()
            return
        has_device = await d.db.fetchval(
            "SELECT true FROM devices WHERE enabled AND user_id = $1 LIMIT 1", event.recipient_id
        )
        if has_device:
            text = ALERT_TEXT[event.kind].format(actor=row["handle"])
            await self._send_push_jobs(
                [
                    events.PushJob(
                        kind="alert",
                        user_id=event.recipient_id,
                        created_at_ms=int(time.time() * 1000),
                        text=text,
                        post_id=event.post_id,
                    )
                ]
            )


def _feed_jobs(event: events.PostCreated, offline: list[int]) -> list[events.PushJob]:
    """Offline followers with a device get a (coalesced, silent) feed push job."""
    return [
        events.PushJob(
            kind="feed", user_id=u, created_at_ms=event.created_at_ms, post_id=event.post_id
        )
        for u in offline
    ]
