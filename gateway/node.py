"""This gateway node: admission (auth, limits), connect/disconnect of clients (hub,
subscriptions, presence, resume), closing, and the once-a-second stats report."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from core import keys
from core.auth import TokenError, TokenSigner
from core.settings import Settings
from core.tiers import TierPolicy
from gateway.broker import RedisBroker
from gateway.client import Client, QueueLimits
from gateway.codes import Close
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.outgoing import control
from gateway.presence import Presence
from gateway.resume import Resumer
from gateway.transport import Transport

log = logging.getLogger(__name__)
STATS_TTL = 5
FOLLOWED_PULL_AUTHORS = """
SELECT f.followee_id FROM follows f JOIN users u ON u.id = f.followee_id
 WHERE f.follower_id = $1
   AND (u.fanout_tier = 'pull' OR (u.fanout_tier IS NULL AND u.follower_count > $2))
"""


@dataclass(frozen=True, slots=True)
class Admission:
    user_id: int
    token: str


class Refused(Exception):
    def __init__(self, code: Close, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.error, self.message = code, status, error, message


@dataclass(slots=True)
class RateLimiter:
    """Token bucket per client address for new connections."""

    rate: float
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        if len(self.buckets) > 100_000:  # bounded memory under an address-spraying flood
            self.buckets.clear()
        tokens, last = self.buckets.get(address, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[address] = (tokens, now)
            return False
        self.buckets[address] = (tokens - 1, now)
        return True


class GatewayNode:
    def __init__(
        self,
        settings: Settings,
        name: str,
        redis_client: aioredis.Redis,
        db: asyncpg.Pool,
        resumer: Resumer,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.name = name
        self._redis = redis_client
        self._db = db
        self._resumer = resumer
        self._metrics = metrics
        self._signer = TokenSigner(settings.secret_key, settings.token_ttl_seconds)
        self._tiers = TierPolicy(settings, redis_client)
        self._limiter = RateLimiter(settings.gateway_connects_per_ip)
        self.limits = QueueLimits(settings.gateway_queue_messages, settings.gateway_queue_bytes)
        self.hub = Hub()
        self.broker = RedisBroker(redis_client, f"gw:{name}", self._dispatch)
        self.presence = Presence(redis_client, name, settings.presence_ttl_seconds)
        self._closing: dict[Client, asyncio.Task[None]] = {}
        self._slow_disconnects = 0
        self._delivered = 0

    # -- admission ---------------------------------------------------------------------

    def admit(self, address: str, token: str | None) -> Admission:
        if not self._limiter.allow(address):
            raise Refused(
                Close.RATE_LIMITED,
                429,
                "rate_limited",
                "too many new connections from this address",
            )
        if not token:
            raise Refused(
                Close.UNAUTHORIZED,
                401,
                "unauthorized",
                "token required: Authorization header or access_token",
            )
        try:
            claims = self._signer.verify(token)
        except TokenError as exc:
            raise Refused(Close.UNAUTHORIZED, 401, exc.code, str(exc)) from None
        if self.hub.connections(claims.user_id) >= self.settings.gateway_max_connections_per_user:
            raise Refused(
                Close.TOO_MANY_CONNECTIONS,
                429,
                "too_many_connections",
                "connection limit per user reached",
            )
        return Admission(claims.user_id, token)

    # -- lifecycle ---------------------------------------------------------------------

    def new_client(self, user_id: int, transport: Transport) -> Client:
        return Client(user_id, transport, self.limits, self._on_close)

    async def connect(self, client: Client, token: str, since: int | None) -> None:
        started = time.monotonic()
        authors = await self._pull_authors(client.user_id)
        first = self.hub.connections(client.user_id) == 0
        await self.broker.subscribe(self.hub.add(client, authors))
        if first:
            await self.presence.online([client.user_id])
        self._metrics.connections.labels(client.transport.name).inc()
        if since is None:
            client.finish_replay(set())
        else:
            missed, ids = await self._resumer.missed(token, since)
            client.send_now(missed)
            client.finish_replay(ids)
        log.debug(
            "user %d connected over %s in %.1f ms (resume: %s)",
            client.user_id,
            client.transport.name,
            (time.monotonic() - started) * 1000,
            since,
        )

    async def disconnect(self, client: Client) -> None:
        if not client.closing:
            client.closing = True
        self._metrics.connections.labels(client.transport.name).dec()
        self._delivered += client.delivered
        self.broker.unsubscribe(self.hub.remove(client))
        if self.hub.connections(client.user_id) == 0:
            try:
                await self.presence.offline(client.user_id)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("presence of %d not cleared: %s", client.user_id, exc)
        closer = self._closing.pop(client, None)
        if closer is not None:
            await closer

    def _on_close(self, client: Client, code: Close, reason: str) -> None:
        if code is Close.SLOW_CONSUMER:
            self._slow_disconnects += 1
            self._metrics.slow_disconnects.inc()
        if code is Close.SHUTTING_DOWN:
            client.transport.write([control("reconnect")])
        self._closing[client] = asyncio.create_task(client.transport.close(code, reason))

    async def shutdown(self, wait: float) -> None:
        """Tell every client to reconnect elsewhere, then wait (bounded) for the closes."""
        for client in self.hub.all_clients():
            client.close(Close.SHUTTING_DOWN, "server restarting; reconnect with since")
        pending = list(self._closing.values())
        if pending:
            await asyncio.wait(pending, timeout=wait)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        self._metrics.delivered.inc(self.hub.dispatch(channel, payload))

    async def _pull_authors(self, user_id: int) -> list[int]:
        thresholds = await self._tiers.thresholds()
        rows = await self._db.fetch(FOLLOWED_PULL_AUTHORS, user_id, thresholds.throttle_max)
        return [r["followee_id"] for r in rows]

    # -- stats -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        clients = self.hub.all_clients()
        by_transport = {"websocket": 0, "sse": 0}
        for client in clients:
            by_transport[client.transport.name] += 1
        return {
            "connections_websocket": by_transport["websocket"],
            "connections_sse": by_transport["sse"],
            "users": self.hub.users,
            "delivered_total": self._delivered + sum(c.delivered for c in clients),
            "slow_disconnects_total": self._slow_disconnects,
            "queue_high_water_bytes": max((c.high_water for c in clients), default=0),
            "reported_at_ms": int(time.time() * 1000),
        }

    async def report_stats(self) -> None:
        """Every second, this node's numbers in Redis (for the ops dashboard: a node
        whose key expired has stopped reporting) and in /metrics."""
        key = keys.node_stats("gateway", self.name)
        while True:
            stats = self.snapshot()
            self._metrics.users.set(stats["users"])
            self._metrics.high_water.set(stats["queue_high_water_bytes"])
            try:
                await self._redis.set(key, orjson.dumps(stats), ex=STATS_TTL)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("stats not reported: %s", exc)
            await asyncio.sleep(1.0)
