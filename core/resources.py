"""Typed app state and cleanup contexts for the clients services hold for their lifetime.

A service lists the contexts it needs in `app.cleanup_ctx`; each creates its client at
start-up (bounded wait, clear error) and closes it on shutdown, in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.clients import (
    REDIS_DOWN,
    AnyRedis,
    build_redis,
    build_redis_cluster,
    cluster_options,
    create_any_redis,
    create_db_pool,
    create_producer,
    ping_all,
    producer_options,
)
from core.service import OPS, SETTINGS, Check
from core.settings import Settings, mask_url
from core.supervision import SUPERVISOR, Child

log = logging.getLogger(__name__)

DB = web.AppKey("db", asyncpg.Pool)
# A cluster client when settings.redis_cluster.
REDIS: web.AppKey[AnyRedis] = web.AppKey("redis")
PRODUCER = web.AppKey("producer", AIOKafkaProducer)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, *REDIS_DOWN)


async def _db_probe(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")


def postgres_ctx(critical: bool = True) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_db_pool(app[SETTINGS])
        app[DB] = pool
        app[OPS].checks.append(Check("postgres", lambda: _db_probe(pool), critical))
        yield
        await pool.close()

    return ctx


def redis_ctx(critical: bool = True) -> CleanupCtx:
    """critical=False: start even when Redis is down (the service degrades, it does not fail).
    With settings.redis_cluster the client is a cluster client (core.clients.AnyRedis),
    and readiness asks every master."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        client: AnyRedis
        if critical:
            client = await create_any_redis(settings)
        elif settings.redis_cluster:
            client = build_redis_cluster(settings.redis_url, **cluster_options(settings))
            await _degraded_start(settings, client.initialize())
        else:
            client = build_redis(settings)
            await _degraded_start(settings, client.ping())
        app[REDIS] = client
        app[OPS].checks.append(Check("redis", lambda: ping_all(client), critical))
        yield
        await client.aclose()

    return ctx


async def _degraded_start(settings: Settings, first: Awaitable[object]) -> None:
    try:
        await first
    except UNREACHABLE as exc:
        log.warning(
            "Redis at %s is unreachable (%s); running degraded until it returns",
            mask_url(settings.redis_url),
            exc,
        )


def producer_ctx() -> CleanupCtx:
    """A started producer; the service cannot start without Kafka."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        producer = await create_producer(app[SETTINGS])
        app[PRODUCER] = producer
        app[OPS].checks.append(Check("kafka", producer.client.fetch_all_metadata))
        yield
        await producer.stop()

    return ctx


class KafkaLink:
    """A producer that is connected in the background, for services that must keep
    working while Kafka is down (the API server: Kafka down delays fan-out, it never
    fails a request). `producer` is None until the first successful connection."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.producer: AIOKafkaProducer | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Connects, retrying while Kafka is away, then holds the link until cancelled:
        from then on the producer reconnects by itself. (Returning would read as a dead
        task to the supervisor.)"""
        delay = 0.5
        while self.producer is None:
            candidate = AIOKafkaProducer(**producer_options(self._settings))
            try:
                await candidate.start()
            except KafkaError as exc:
                await candidate.stop()
                log.warning(
                    "Kafka at %s unreachable (%s); retrying in %.1f s",
                    self._settings.kafka_bootstrap,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except BaseException:
                # Shutting down while Kafka is away, or a failure we are restarted
                # after: either way no producer is left behind.
                await candidate.stop()
                raise
            self.producer = candidate
            self.connected.set()
            log.info("connected to Kafka at %s", self._settings.kafka_bootstrap)
        await asyncio.Event().wait()

    async def probe(self) -> None:
        if self.producer is None:
            raise KafkaError("not connected yet")
        await self.producer.client.fetch_all_metadata()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


KAFKA_LINK = web.AppKey("kafka_link", KafkaLink)


def kafka_link_ctx() -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        link = KafkaLink(app[SETTINGS])
        app[KAFKA_LINK] = link
        app[OPS].checks.append(Check("kafka", link.probe, critical=False))
        # Not critical, like the kafka check: while there is no link, events wait in
        # the outbox and requests are served.
        async with app[SUPERVISOR].running(Child("kafka-link", link.run, critical=False)):
            yield
        await link.close()

    return ctx
