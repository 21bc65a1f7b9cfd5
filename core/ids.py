"""Time-ordered 64-bit ids, unique across processes and machines.

Layout (Snowflake-style): 1 unused sign bit | 41 bits milliseconds since EPOCH_MS |
10 bits worker id | 12 bits sequence. Sorting ids sorts by creation time (to the
millisecond). Uniqueness across processes comes from the worker id, which each process
leases from Postgres (see IdLease) so no two live processes share one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

import asyncpg

from core.supervision import Child, Policy

log = logging.getLogger(__name__)

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z; 41 bits of ms last until ~2094.
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER_ID = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
# A clock that steps back by less than this is waited out; more means a broken clock
# and generating ids would risk duplicates, so we refuse.
MAX_BACKWARD_MS = 5_000


class IdError(RuntimeError):
    """Ids cannot be generated safely (clock jumped back, lease lost)."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IdGenerator:
    """Issues strictly increasing ids for one worker id. Not thread-safe (one event loop)."""

    def __init__(
        self, worker_id: int, clock: Callable[[], int] = _wall_ms, not_before_ms: int = -1
    ) -> None:
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(f"worker id must be 0..{MAX_WORKER_ID}, got {worker_id}")
        self.worker_id = worker_id
        self._clock = clock
        # Ids are never issued at or below not_before_ms (a previous holder's high water).
        self._last_ms = not_before_ms
        self._sequence = MAX_SEQUENCE if not_before_ms >= 0 else 0
        self.valid = True

    def next_id(self) -> int:
        if not self.valid:
            raise IdError("worker id lease lost; refusing to issue ids")
        now = self._clock()
        if now < self._last_ms:
            if self._last_ms - now > MAX_BACKWARD_MS:
                raise IdError(f"clock moved back {self._last_ms - now} ms")
            now = self._wait_until(self._last_ms)
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & MAX_SEQUENCE
            if self._sequence == 0:  # 4096 ids in this millisecond: borrow the next one
                now = self._wait_until(self._last_ms + 1)
        else:
            self._sequence = 0
        self._last_ms = now
        return (
            ((now - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS))
            | (self.worker_id << SEQUENCE_BITS)
            | self._sequence
        )

    def _wait_until(self, target_ms: int) -> int:
        # Busy-waits at most a few ms in practice (sequence overflow) and is bounded by
        # MAX_BACKWARD_MS for clock steps; both are rare enough not to need a sleep.
        now = self._clock()
        while now < target_ms:
            time.sleep(0.0005)
            now = self._clock()
        return now


def id_timestamp_ms(snowflake: int) -> int:
    return (snowflake >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS


def id_datetime(snowflake: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(id_timestamp_ms(snowflake) / 1000, tz=dt.UTC)


def min_id_for_ms(ms: int) -> int:
    """Smallest id that could be issued at wall-clock millisecond `ms` (for range queries)."""
    return max(ms - EPOCH_MS, 0) << (WORKER_BITS + SEQUENCE_BITS)


_ACQUIRE = """
UPDATE id_worker_leases AS l
   SET holder = $1, expires_at = now() + make_interval(secs => $2), generation = generation + 1
 WHERE l.worker_id = (
        SELECT worker_id FROM id_worker_leases
         WHERE expires_at < now()
         ORDER BY expires_at, worker_id
         LIMIT 1
           FOR UPDATE SKIP LOCKED)
RETURNING l.worker_id, l.generation, (extract(epoch FROM l.high_water) * 1000)::bigint
"""
_RENEW = """
UPDATE id_worker_leases
   SET expires_at = now() + make_interval(secs => $3),
       high_water = greatest(high_water, to_timestamp($4 / 1000.0))
 WHERE worker_id = $1 AND generation = $2
"""
_RELEASE = """
UPDATE id_worker_leases
   SET expires_at = now(), high_water = greatest(high_water, to_timestamp($3 / 1000.0))
 WHERE worker_id = $1 AND generation = $2
"""


class IdLease:
    """Owns one worker id leased from Postgres, renewed by `keep` (a supervised task).

    A process that cannot renew (partitioned from Postgres) stops issuing ids before its
    lease can expire, so a successor taking the same worker id never overlaps with it.
    """

    def __init__(self, pool: asyncpg.Pool, holder: str, ttl_seconds: float = 60.0) -> None:
        self._pool = pool
        self._holder = holder
        self._ttl = ttl_seconds
        self._generation = 0
        self._deadline = 0.0
        self.generator: IdGenerator | None = None

    async def acquire(self) -> IdGenerator:
        row = await self._pool.fetchrow(_ACQUIRE, self._holder, self._ttl)
        if row is None:
            raise IdError(f"all {MAX_WORKER_ID + 1} worker ids are leased")
        worker_id, self._generation, high_water_ms = row
        self._deadline = time.monotonic() + self._ttl * 0.8
        # The previous holder may have issued ids up to high_water on a clock ahead of
        # ours; never issue an id at or below that millisecond.
        self.generator = IdGenerator(worker_id, not_before_ms=high_water_ms or -1)
        log.info("leased id worker %d (generation %d)", worker_id, self._generation)
        return self.generator

    def child(self) -> Child:
        """Renewal as a service runs it. A lost lease stops the process, not only the
        renewal: the generator refuses ids for good (the worker id may be someone
        else's by now), so every write would fail while the process looked healthy, and
        restarting the renewal cannot win the lease back. A fresh process leases a free
        worker id above the high water, the one recovery known to be safe; while Postgres
        is unreachable it cannot start, and could not serve a write anyway."""
        return Child("id-lease", self.keep, Policy.STOP_PROCESS)

    async def keep(self) -> None:
        """Renews the lease until it is lost, then raises IdError; id generation has
        stopped by then (the generator is invalid before this returns control)."""
        generator = self.generator
        assert generator is not None, "acquire() first"
        while generator.valid:
            await asyncio.sleep(self._ttl / 4)
            try:
                status = await self._pool.execute(
                    _RENEW, generator.worker_id, self._generation, self._ttl, _wall_ms()
                )
            except (
                TimeoutError,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                log.warning("id lease renewal failed: %s", exc)
                status = None
            if status == "UPDATE 1":
                self._deadline = time.monotonic() + self._ttl * 0.8
            elif status == "UPDATE 0" or time.monotonic() > self._deadline:
                generator.valid = False
        raise IdError(f"id worker {generator.worker_id} lease lost; id generation stopped")

    async def release(self) -> None:
        """After `keep` was stopped."""
        if self.generator is not None and self.generator.valid:
            self.generator.valid = False
            await self._pool.execute(
                _RELEASE, self.generator.worker_id, self._generation, _wall_ms() + 1
            )
