"""This gateway node: admission (auth, limits), connect/disconnect of clients (hub,
subscriptions, presence, resume), closing, its supervised long-lived tasks, and the
once-a-second stats report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.auth import TokenError, TokenSigner
from core.redis_address import RedisAddress
from core.settings import Settings
from core.stats import Snapshot, reporter
from core.supervision import Child
from core.tiers import TierPolicy
from gateway.authors import AuthorsUnavailable, PullAuthors
from gateway.broker import BrokerUnavailable, RedisBroker
from gateway.client import Client, Flusher, QueueLimits
from gateway.codes import Close
from gateway.hub import Hub
from gateway.latency import DeliveryLatency
from gateway.limiter import RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.outgoing import control
from gateway.presence import Presence, PresenceUnavailable
from gateway.resume import Resumer, ResumeUnavailable
from gateway.sharded_broker import ShardedBroker
from gateway.transport import Transport

log = logging.getLogger(__name__)


class Broker(Protocol):
    """What the node needs of its pub/sub: broker.RedisBroker (one link to a single
    Redis) or sharded_broker.ShardedBroker (one link per master of a cluster)."""

    reconnects: int
    subscribe_timeout: float

    @property
    def connected(self) -> bool: ...

    @property
    def channels(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> None: ...

    async def subscribe(self, channels: Iterable[bytes]) -> None: ...

    def unsubscribe(self, channels: Iterable[bytes]) -> None: ...

    async def run(self) -> None: ...

    async def run_subscriptions(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    user_id: int
    token: str


class Refused(Exception):
    def __init__(self, code: Close, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.error, self.message = code, status, error, message


class GatewayNode:
    def __init__(
        self,
        settings: Settings,
        name: str,
        redis_client: aioredis.Redis | RedisCluster,
        db: asyncpg.Pool,
        resumer: Resumer,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.name = name
        self._redis = redis_client
        self._resumer = resumer
        self._metrics = metrics
        # A connection's token is verified once, when it connects: remembering tokens
        # would only add memory per connection.
        self._signer = TokenSigner(settings.secret_key, settings.token_ttl_seconds, remember=0)
        self._limiter = RateLimiter(settings.gateway_connects_per_ip)
        self.limits = QueueLimits(settings.gateway_queue_messages, settings.gateway_queue_bytes)
        self.hub = Hub()
        self.flusher = Flusher()
        self.latency = DeliveryLatency(metrics.post_latency)
        self.broker: Broker
        if isinstance(redis_client, RedisCluster):
            self.broker = ShardedBroker(redis_client, self._dispatch, self._on_channels_gap)
        else:
            self.broker = RedisBroker(
                RedisAddress.of(redis_client), f"gw:{name}", self._dispatch, self._on_gap
            )
        self.presence = Presence(
            redis_client,
            name,
            settings.presence_ttl_seconds,
            connected=lambda user: self.hub.connections(user) > 0,
            users=self.hub.user_ids,
        )
        self.authors = PullAuthors(db, TierPolicy(settings, redis_client))
        # Run by the app's supervisor (core.supervision): each restarted in place.
        self.tasks = (
            Child("pubsub-link", self.broker.run),
            Child("pubsub-subscriptions", self.broker.run_subscriptions),
            Child("presence", self.presence.run),
            Child("pull-authors", self.authors.run),
            # Every second, this node's numbers in Redis (for the ops dashboard: a node
            # whose key expired has stopped reporting) and in /metrics.
            reporter(self._redis, "gateway", self.name, self._report),
        )
        self._closing: dict[Client, asyncio.Task[None]] = {}
        self._slow_disconnects = 0
        self._delivered = 0
        self._queued = 0  # events queued to connections, not yet in the metric

    # -- admission ---------------------------------------------------------------------

    def admit(self, address: str, token: str | None) -> Admission:
        if not self._limiter.allow(address):
            raise self._refused(
                Close.RATE_LIMITED,
                429,
                "rate_limited",
                "too many new connections from this address",
            )
        if not token:
            raise self._refused(
                Close.UNAUTHORIZED,
                401,
                "unauthorized",
                "token required: Authorization header or access_token",
            )
        try:
            claims = self._signer.verify(token)
        except TokenError as exc:
            raise self._refused(Close.UNAUTHORIZED, 401, exc.code, str(exc)) from None
        self._check_room(claims.user_id)
        return Admission(claims.user_id, token)

    def _check_room(self, user: int) -> None:
        if self.hub.connections(user) >= self.settings.gateway_max_connections_per_user:
            raise self._refused(
                Close.TOO_MANY_CONNECTIONS,
                429,
                "too_many_connections",
                "connection limit per user reached",
            )

    def _refused(self, code: Close, status: int, error: str, message: str) -> Refused:
        self._metrics.refused.labels(error).inc()
        return Refused(code, status, error, message)

    # -- lifecycle ---------------------------------------------------------------------

    def new_client(self, user_id: int, transport: Transport) -> Client:
        return Client(user_id, transport, self.limits, self._on_close, self.latency, self.flusher)

    async def connect(self, client: Client, token: str, since: int | None) -> None:
        await self.join(client)
        await self.catch_up(client, token, since)

    async def join(self, client: Client) -> None:
        """Registers the connection and returns once its channels are subscribed and its
        user is marked online, so that what it missed can be asked for without a gap.
        Bounded: raises Refused(TRY_AGAIN) when Redis or Postgres cannot answer in time
        (call disconnect() either way)."""
        started = time.monotonic()
        user = client.user_id
        try:
            # A user's pull-tier authors count for their first connection here only.
            authors = await self.authors.of(user) if self.hub.connections(user) == 0 else []
            # admit() counted the user's connections before this await; a burst of
            # connects was admitted together. Counted again with no await before the add.
            self._check_room(user)
            channels = self.hub.add(client, authors)
            client.joined = True
            self._metrics.connections.labels(client.transport.name).inc()
            await self.broker.subscribe(channels)
            await self.presence.join(user)
        except (AuthorsUnavailable, BrokerUnavailable, PresenceUnavailable) as exc:
            log.warning("user %d not connected, node cannot serve: %s", user, exc)
            raise self._refused(
                Close.TRY_AGAIN,
                503,
                "unavailable",
                "the live stream is unavailable right now; retry in a few seconds",
            ) from None
        log.debug(
            "user %d joined over %s in %.1f ms",
            user,
            client.transport.name,
            (time.monotonic() - started) * 1000,
        )

    async def catch_up(self, client: Client, token: str, since: int | None) -> None:
        """Sends what the client missed since `since` (if given), then goes live."""
        if since is None:
            client.finish_replay()
            return
        try:
            missed = await self._resumer.missed(token, since)
        except ResumeUnavailable as exc:
            log.warning("user %d cannot resume yet (%s): told to retry", client.user_id, exc)
            self._metrics.refused.labels("resume_unavailable").inc()
            client.close(Close.TRY_AGAIN, "cannot resume right now; retry with since shortly")
            return
        client.send_now(missed)
        client.finish_replay()

    async def disconnect(self, client: Client) -> None:
        client.closing = True
        if client.joined:
            client.joined = False
            self._metrics.connections.labels(client.transport.name).dec()
            self._delivered += client.delivered
            self.broker.unsubscribe(self.hub.remove(client))
            if self.hub.connections(client.user_id) == 0:
                self.presence.leave(client.user_id)
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

    def _on_gap(self) -> None:
        """The pub/sub link dropped: events may have been lost (Redis closes a subscriber
        past its output buffer limit, CLIENT KILL, a restart), and nothing tells which or
        for whom. Every local client resumes from its last id and misses nothing."""
        clients = self.hub.all_clients()
        for client in clients:
            client.close(Close.RESUME, "events may have been lost; resume with since")
        self._metrics.pubsub_reconnects.inc()
        log.warning("pub/sub link lost: %d connections told to resume", len(clients))

    def _on_channels_gap(self, channels: list[bytes]) -> None:
        """A cluster link lost, or a slot moved away under a subscription: events on
        these channels may have been lost. Only the clients listening to them resume (a
        user's own channel, or a pull-tier author's they follow); the others keep going."""
        clients = self.hub.listeners(channels)
        for client in clients:
            client.close(Close.RESUME, "events may have been lost; resume with since")
        self._metrics.pubsub_reconnects.inc()
        log.warning(
            "sharded pub/sub gap on %d channels: %d connections told to resume",
            len(channels),
            len(clients),
        )

    async def shutdown(self, wait: float) -> None:
        """Tell every client to reconnect elsewhere, then wait (bounded) for the closes."""
        for client in self.hub.all_clients():
            client.close(Close.SHUTTING_DOWN, "server restarting; reconnect with since")
        pending = list(self._closing.values())
        if pending:
            await asyncio.wait(pending, timeout=wait)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        # Counted here, added to the Prometheus counter once a second (_report): its
        # lock-taking inc() per message cost more than the dispatch itself.
        self._queued += self.hub.dispatch(channel, payload)

    # -- stats -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int | float | None]:
        clients = self.hub.all_clients()
        by_transport = {"websocket": 0, "sse": 0}
        for client in clients:
            by_transport[client.transport.name] += 1
        p50, p99 = self.latency.percentiles()
        return {
            "connections_websocket": by_transport["websocket"],
            "connections_sse": by_transport["sse"],
            "users": self.hub.users,
            "delivered_total": self._delivered + sum(c.delivered for c in clients),
            "slow_disconnects_total": self._slow_disconnects,
            "queue_high_water_bytes": max((c.high_water for c in clients), default=0),
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "pubsub_reconnects_total": self.broker.reconnects,
        }

    def _report(self) -> Snapshot:
        queued, self._queued = self._queued, 0
        self._metrics.delivered.inc(queued)
        stats = self.snapshot()
        self._metrics.users.set(stats["users"] or 0)
        self._metrics.high_water.set(stats["queue_high_water_bytes"] or 0)
        return stats
