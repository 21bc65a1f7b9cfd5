"""What fan-out does with each event. Business decisions live here (tiers, who gets what);
Redis writes go through TimelineWriter, Kafka input and commits through the consumer.

Every handler is idempotent: the consumer may deliver an event again after a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from core import events, keys
from core.ids import IdGenerator, id_timestamp_ms
from core.postview import fetch_rows, full_post, iso
from core.settings import Settings
from core.tiers import Tier, TierPolicy
from core.topics import Topics
from fanout.followers import follower_batches
from fanout.metrics import FanoutMetrics
from fanout.timelines import TimelineWriter

log = logging.getLogger(__name__)

BACKFILL_POSTS = 50
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
    redis: aioredis.Redis | RedisCluster
    writer: TimelineWriter
    producer: AIOKafkaProducer
    topics: Topics
    ids: IdGenerator
    policy: TierPolicy
    metrics: FanoutMetrics


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
        row = await self.d.db.fetchrow(
            "SELECT follower_count, fanout_tier FROM users WHERE id = $1", author_id
        )
        if row is None:
            return Tier.PUSH, 0
        thresholds = await self.d.policy.thresholds()
        return thresholds.tier(row["follower_count"], row["fanout_tier"]), row["follower_count"]

    async def is_heavy(self, event: events.Event) -> bool:
        """A post of a throttled-tier author: fanned out in the background, so it cannot
        hold up the other authors' posts on its partition."""
        if not isinstance(event, events.PostCreated):
            return False
        tier, _ = await self._tier(event.author_id)
        return tier is Tier.THROTTLE

    # -- posts -------------------------------------------------------------------------

    async def post_created(self, event: events.PostCreated) -> None:
        rows = await fetch_rows(self.d.db, [event.post_id])
        if not rows or rows[0]["deleted_at"] is not None:
            return  # deleted before we got to it: nothing to deliver
        started = time.monotonic()
        payload = events.live_post(full_post(rows[0]))  # serialized once for everyone
        tier, followers = await self._tier(event.author_id)
        # The author's own timeline (the API did it too; this covers Redis being down then).
        await self.d.writer.add_posts(event.author_id, [event.post_id])
        if tier is Tier.PULL:
            await self.d.redis.publish(keys.author_channel(event.author_id), payload)
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
        d = self.d
        checkpoint = keys.fanout_checkpoint(event.post_id)
        resume = int(await d.redis.get(checkpoint) or 0)
        throttle = Throttle(d.settings.fanout_throttle_rate) if tier is Tier.THROTTLE else None
        async for batch in follower_batches(
            d.db,
            event.author_id,
            resume,
            d.settings.fanout_batch_size,
            d.settings.fanout_active_days,
        ):
            result = await d.writer.add(event.post_id, payload, batch)
            d.metrics.timeline_writes.inc(result.written)
            d.metrics.batches.labels(tier.value).inc()
            d.metrics.live_publishes.inc(len(batch) - len(result.offline))
            await self._feed_pushes(result.offline, event)
            # Progress survives a crash: a restarted worker resumes after this follower.
            await d.redis.set(checkpoint, batch[-1], ex=CHECKPOINT_TTL)
            if throttle is not None:
                await throttle.spend(len(batch))
        await d.redis.delete(checkpoint)

    async def _feed_pushes(self, offline: list[int], event: events.PostCreated) -> None:
        """Offline followers with a device get a (coalesced, silent) feed push job."""
        if not offline:
            return
        rows = await self.d.db.fetch(
            "SELECT DISTINCT user_id FROM devices WHERE enabled AND user_id = ANY($1::bigint[])",
            offline,
        )
        jobs = [
            events.PushJob(
                kind="feed",
                user_id=r["user_id"],
                created_at_ms=event.created_at_ms,
                post_id=event.post_id,
            )
            for r in rows
        ]
        await self._send_push_jobs(jobs)

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
        await d.redis.set(keys.post_cache(event.post_id), b"-", ex=24 * 3600)
        await d.writer.remove_posts(event.author_id, [event.post_id])
        tier, _ = await self._tier(event.author_id)
        if tier is Tier.PULL:
            await d.redis.publish(keys.author_channel(event.author_id), payload)
            return
        removed = 0
        async for batch in follower_batches(
            d.db, event.author_id, 0, d.settings.fanout_batch_size, None
        ):
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
        notification: dict[str, Any] = {
            "id": str(row["id"]),
            "kind": event.kind,
            "actor": {
                "id": str(event.actor_id),
                "handle": row["handle"],
                "display_name": row["display_name"],
            },
            "post_id": None if event.post_id is None else str(event.post_id),
            "created_at": iso(row["created_at"]),
        }
        if await d.redis.exists(keys.presence(event.recipient_id)):
            await d.redis.publish(
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
