"""One push job, from decision to outcome: is it still worth sending (not expired, user
still offline, not coalesced away, not already sent), to which devices, with which
retries; and what the answers mean for the devices (gone: disabled).

This module decides; providers (push/providers/) speak to APNs, FCM and Web Push. It never
retries forever: every job has a deadline (its TTL) and a maximum number of attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from core import keys
from core.clients import AnyRedis
from core.events import PushJob
from core.settings import Settings
from push import retry
from push.metrics import PushMetrics
from push.providers import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    kind: str  # apns | fcm | webpush
    token: str  # APNs device token, FCM registration token or Web Push endpoint
    p256dh: str | None
    auth: str | None


# Sends one job to one device of its provider and says what happened. Bound in push/app.py
# to the real providers; `ttl` is what is left of the job's lifetime, in seconds.
Channel = Callable[[Device, PushJob, int], Awaitable[Outcome]]


def job_id(job: PushJob) -> str:
    """Stable across replays of the same Kafka message (it has no id of its own)."""
    raw = f"{job.kind}:{job.user_id}:{job.created_at_ms}:{job.post_id}:{job.text}"
    return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: asyncpg.Pool,
        redis: AnyRedis,
        channels: dict[str, Channel],
        metrics: PushMetrics,
    ) -> None:
        self._settings = settings
        self._db = db
        self._redis = redis
        self._channels = channels
        self._metrics = metrics

    def _ttl(self, job: PushJob) -> int:
        s = self._settings
        return s.push_feed_ttl_seconds if job.kind == "feed" else s.push_alert_ttl_seconds

    async def handle(self, job: PushJob) -> str:
        """Handle one job; returns the decision (also counted in metrics)."""
        decision = await self._handle(job)
        self._metrics.job(job.kind, decision)
        return decision

    async def _handle(self, job: PushJob) -> str:
        deadline = job.created_at_ms / 1000 + self._ttl(job)
        if time.time() >= deadline:
            return "expired"
        if await self._online(job.user_id):
            return "online"  # the live stream has it; a push now would be stale
        devices = await self._devices(job.user_id)
        if not devices:
            return "no_device"
        claim = await self._claim(job)
        if claim is None:
            return "coalesced" if job.kind == "feed" else "duplicate"
        try:
            results = await asyncio.gather(*(self._deliver(d, job, deadline) for d in devices))
        except asyncio.CancelledError:
            # Shutting down or partition revoked before delivery: the job will be
            # redelivered from Kafka, so let that copy through instead of dropping it.
            await self._redis.delete(claim)
            raise
        return "sent" if any(results) else "undelivered"

    async def _online(self, user_id: int) -> bool:
        return bool(await self._redis.exists(keys.presence(user_id)))

    async def _devices(self, user_id: int) -> list[Device]:
        rows = await self._db.fetch(
            "SELECT id, kind, token, p256dh, auth FROM devices WHERE user_id = $1 AND enabled",
            user_id,
        )
        return [Device(r["id"], r["kind"], r["token"], r["p256dh"], r["auth"]) for r in rows]

    async def _claim(self, job: PushJob) -> str | None:
        """Feed pushes: one per user per window, whatever the number of posts (the app
        fetches everything new when woken). Alerts: one per job, replays included."""
        if job.kind == "feed":
            key = keys.push_feed_window(job.user_id)
            window = self._settings.push_feed_window_seconds
        else:
            key = keys.push_alert_sent(job.user_id, job_id(job))
            window = self._ttl(job)
        claimed = await self._redis.set(key, b"1", nx=True, ex=window)
        return key if claimed else None

    async def _deliver(self, device: Device, job: PushJob, deadline: float) -> bool:
        """True when the device's push service accepted the message."""
        channel = self._channels.get(device.kind)
        if channel is None:
            self._metrics.outcome(device.kind, "failed", "not_configured")
            return False
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            outcome = await channel(device, job, max(1, int(deadline - time.time())))
            self._metrics.send_seconds.labels(device.kind).observe(time.perf_counter() - started)
            self._metrics.outcome(outcome.provider, outcome.result, outcome.reason)
            if outcome.result == "sent":
                log.info(
                    "push sent: %s %s to user %d device %d (attempt %d)",
                    job.kind,
                    device.kind,
                    job.user_id,
                    device.id,
                    attempt,
                )
                return True
            if outcome.result == "invalid":
                await self._disable(device, f"{outcome.provider}:{outcome.reason}")
                return False
            if outcome.result == "failed":
                log.warning(
                    "push refused: %s to device %d: %s (%s)",
                    device.kind,
                    device.id,
                    outcome.reason,
                    outcome.status,
                )
                return False
            delay = retry.next_delay(attempt, outcome.retry_after, time.time(), deadline)
            if delay is None:
                self._metrics.outcome(outcome.provider, "failed", "gave_up")
                log.warning(
                    "push given up: %s to device %d after %d attempts (last: %s)",
                    device.kind,
                    device.id,
                    attempt,
                    outcome.reason,
                )
                return False
            await asyncio.sleep(delay)
            if await self._online(job.user_id):
                return False  # came back meanwhile: the push would be stale now

    async def _disable(self, device: Device, reason: str) -> None:
        # The token must still match: it may have been registered again meanwhile.
        disabled = await self._db.fetchval(
            "UPDATE devices SET enabled = false, disabled_reason = $3, disabled_at = now(),"
            " updated_at = now() WHERE id = $1 AND token = $2 AND enabled RETURNING id",
            device.id,
            device.token,
            reason,
        )
        if disabled is not None:
            self._metrics.disabled.labels(device.kind).inc()
            log.info("device %d disabled: %s", device.id, reason)
