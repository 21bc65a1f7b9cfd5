"""Transactional outbox: events are written with the change they describe (same
transaction) and published to Kafka by one relay, in id order, then marked sent.

The relay is woken by LISTEN/NOTIFY and polls as a fallback. Only the instance holding
an advisory lock relays, so per-author order survives several API servers. Kafka down:
rows stay unsent and the backlog drains, in order, when it returns.

A deployment is a topic prefix (KAFKA_TOPIC_PREFIX): rows carry their writer's prefix,
and the lock and the rows relayed are per prefix, so deployments that share a database
never publish each other's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from core.events import Event, encode
from core.resources import KafkaLink
from core.topics import Topics

if TYPE_CHECKING:  # server.context holds an Outbox
    from server.context import Conn

log = logging.getLogger(__name__)

CHANNEL = "outbox"
_RELAY_LOCK = 0x6F75_7462  # "outb"
BATCH = 500
POLL_SECONDS = 1.0
KEEP_SENT = "1 day"


@dataclass(frozen=True, slots=True)
class Outbox:
    """Where this deployment's events wait for its relay."""

    prefix: str  # KAFKA_TOPIC_PREFIX

    async def enqueue(self, conn: Conn, topic: str, key: int, event: Event) -> None:
        """Add an event (`topic` as core.topics names it) inside the caller's
        transaction; NOTIFY is delivered at commit."""
        await conn.execute(
            "INSERT INTO outbox (topic_prefix, topic, key, payload) VALUES ($1, $2, $3, $4)",
            self.prefix,
            topic,
            str(key).encode(),
            encode(event),
        )
        await conn.execute(f"NOTIFY {CHANNEL}")


def relay_lock(prefix: str) -> tuple[int, int]:
    """The advisory lock (two int4 keys) of one deployment's relay."""
    return _RELAY_LOCK, int.from_bytes(zlib.crc32(prefix.encode()).to_bytes(4), signed=True)


class OutboxRelay:
    def __init__(
        self, database_url: str, link: KafkaLink, outbox: Outbox, published: Counter
    ) -> None:
        """Relays `outbox`'s rows, to the topics of its prefix."""
        self._database_url = database_url
        self._prefix = outbox.prefix
        self._link = link
        topics = Topics.with_prefix(outbox.prefix)
        self._topics = {
            name: getattr(topics, name.replace("-", "_"))
            for name in ("posts", "follows", "engagements", "push")
        }
        self._wake = asyncio.Event()
        self._published = published

    async def run(self) -> None:
        """Supervise forever: (re)connect, take the relay lock, relay; back off on errors."""
        delay = 0.5
        while True:
            try:
                await self._run_once()
                delay = 0.5
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run_once(self) -> None:
        conn = await asyncpg.connect(self._database_url, timeout=5)
        try:
            while True:
                if await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", *relay_lock(self._prefix)
                ):
                    break
                await asyncio.sleep(2.0)  # another server relays; stand by
            await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
            log.info("outbox relay active")
            last_purge = 0.0
            while True:
                await self._link.connected.wait()
                sent = await self._relay_batch(conn)
                if time.monotonic() - last_purge > 600:
                    await self._purge(conn)
                    last_purge = time.monotonic()
                if sent < BATCH:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            await conn.close(timeout=2)

    async def _purge(self, conn: Conn) -> None:
        """Housekeeping done by the one active relay: sent events and expired
        idempotency keys (kept 24 h) are deleted."""
        await conn.execute(f"DELETE FROM outbox WHERE sent_at < now() - interval '{KEEP_SENT}'")
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'"
        )

    async def _relay_batch(self, conn: Conn) -> int:
        rows = await conn.fetch(
            "SELECT id, topic, key, payload FROM outbox"
            " WHERE sent_at IS NULL AND topic_prefix = $1 ORDER BY id LIMIT $2",
            self._prefix,
            BATCH,
        )
        if not rows:
            return 0
        producer = self._link.producer
        assert producer is not None
        started = time.monotonic()
        try:
            # Sends are queued in order; the idempotent producer keeps that order per
            # partition even across its own retries.
            futures = [
                await producer.send(self._topics[r["topic"]], value=r["payload"], key=r["key"])
                for r in rows
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            log.warning("outbox relay: Kafka unavailable (%s); %d events wait", exc, len(rows))
            await asyncio.sleep(1.0)
            return 0
        await conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
            [r["id"] for r in rows],
        )
        self._published.inc(len(rows))
        log.info(
            "outbox relay: published %d events in %.1f ms",
            len(rows),
            (time.monotonic() - started) * 1000,
        )
        return len(rows)
