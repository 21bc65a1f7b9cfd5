"""Reads served by a PostgreSQL streaming replica (DATABASE_READ_URL), as fresh as the
primary's: the heavy read-only queries (fan-out's follower pages, timeline rebuilds, the
feed's Postgres fallback, profile timelines, search) leave the primary.

Owns the read pool, the replica's lag monitor and their /readyz entry and metrics. It
never writes, and never fails a read because of the replica: whatever goes wrong there
(down, lagging, a query cancelled by replay), the same query runs on the primary.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from aiohttp import web
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import CollectorRegistry, Counter, Gauge

from core.clients import CONNECT_ERRORS, create_read_pool
from core.resources import DB, CleanupCtx
from core.service import OPS, SETTINGS, Check
from core.settings import mask_url
from core.supervision import SUPERVISOR, Child

log = logging.getLogger(__name__)

# WAL positions as plain integers (bytes since 0/0): asyncpg has no pg_lsn codec.
PRIMARY_LSN = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"
# NULL when the server is not a standby (promoted, or DATABASE_READ_URL names a primary).
REPLAY_LSN = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
REPLICA_STATE = f"""
SELECT ({REPLAY_LSN.removeprefix("SELECT ")}) AS replayed,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused
"""
MONITOR_SECONDS = 1.0
# A replica that has not replayed what the primary had written this long ago is
# "behind": reads skip it, instead of each waiting out READ_WAIT_SECONDS first.
BEHIND_SECONDS = 1.0
# How long a read waits for the replica to replay the primary's position before it
# runs on the primary instead. On loopback a replica replays within a millisecond or
# two; waiting longer would add latency to every read only while the replica lags,
# which the monitor then notices within a second (BEHIND_SECONDS).
READ_WAIT_SECONDS = 0.05
# A replica that does not hand out a connection or answer its position check this fast
# is not worth waiting for: the primary answers instead.
CHECK_TIMEOUT = 1.0
# Errors after which the replica is skipped until the monitor finds it answering again.
# PostgresError covers "canceling statement due to conflict with recovery", a database
# not replayed yet (a test run's, just created) and a replica still starting up.
REPLICA_ERRORS: tuple[type[BaseException], ...] = CONNECT_ERRORS


class Reader(Protocol):
    """Where a read-only query can run: a ReplicaReads, or a plain pool (benchmarks)."""

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the monitor saw last (the /readyz entry and the gauges)."""

    up: bool
    lag_bytes: int = 0
    lag_seconds: float = 0.0
    paused: bool = False
    error: str = ""

    @property
    def usable(self) -> bool:
        # Paused replay (pg_wal_replay_pause) will not catch up by itself: skipped at once.
        return self.up and not self.paused and self.lag_seconds < BEHIND_SECONDS

    def describe(self) -> str:
        if not self.up:
            return f"down: {self.error}; reads go to the primary"
        lag = f"lag {self.lag_seconds:.1f} s, {self.lag_bytes} bytes"
        if self.paused:
            return f"replay paused ({lag}); reads go to the primary"
        if not self.usable:
            return f"behind ({lag}); reads go to the primary"
        return f"ok ({lag})"


class ReplicaReads:
    """Read-only queries, on the replica when it has everything the primary had when
    the read began, else on the primary.

    How lag is handled (why a read never misses a post its author just made): each read
    first takes the primary's WAL flush position (`pg_current_wal_flush_lsn()`: every
    transaction that committed before the read began is at or below it, since commits
    are synchronous here), then asks the replica whether it has replayed that far, and
    only then runs its query there. A standby's snapshot taken after replaying a
    position sees every commit up to it, so the replica's answer is the primary's answer
    at the moment the read began: read-your-writes holds for everybody, not just for
    the writer. When the replica is short of the position it is asked again for up to
    READ_WAIT_SECONDS, then the query runs on the primary.

    Chosen over merging the replica's rows with the primary's newest rows: a merge must
    know which rows the replica may lack, and WAL positions do not map to post ids
    (ids are taken before commit, deletes change old rows), and it would be written once
    per query. The position check costs one tiny query on the primary (no table read)
    and one on the replica; the query itself, the part that costs, runs on the replica.

    A monitor (run as a supervised task) measures the lag every MONITOR_SECONDS: while
    the replica is down or BEHIND_SECONDS behind, reads go straight to the primary
    without trying it. Without a replica (DATABASE_READ_URL empty) every read is the
    primary's."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        registry: CollectorRegistry | None = None,
        wait_seconds: float = READ_WAIT_SECONDS,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._wait = wait_seconds
        self.state = ReplicaState(up=replica is not None, error="not checked yet")
        # (monotonic time, primary position) of recent monitor rounds, oldest first.
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=3600)
        self._reads: Counter | None = None
        if replica is not None and registry is not None:
            self._reads = Counter(
                "feed_db_replica_reads",
                "Read-only queries by where they ran: replica, or the primary because the "
                "replica lagged past the wait, was behind, down or failed the query",
                ["outcome"],
                registry=registry,
            )
            Gauge(
                "feed_db_replica_up", "1 while the read replica answers", registry=registry
            ).set_function(lambda: float(self.state.up))
            Gauge(
                "feed_db_replica_lag_seconds",
                "How long ago the primary had written what the replica has not replayed yet",
                registry=registry,
            ).set_function(lambda: self.state.lag_seconds)
            Gauge(
                "feed_db_replica_lag_bytes",
                "WAL bytes the primary has flushed that the replica has not replayed yet",
                registry=registry,
            ).set_function(lambda: float(self.state.lag_bytes))

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """`query`'s rows, as the primary has them now (see the class docstring)."""
        replica = self._replica
        if replica is None:
            return await self._primary.fetch(query, *args)
        if not self.state.usable:
            self._count("down" if not self.state.up else "behind")
            return await self._primary.fetch(query, *args)
        target = await self._primary.fetchval(PRIMARY_LSN)
        try:
            async with replica.acquire(timeout=CHECK_TIMEOUT) as conn:
                if await self._caught_up(conn, target):
                    rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                    self._count("replica")
                    return rows
            self._count("lagging")
        except REPLICA_ERRORS as exc:
            self._count("failed")
            self._failed(exc)
        return await self._primary.fetch(query, *args)

    async def _caught_up(self, conn: asyncpg.Connection | PoolConnectionProxy, target: int) -> bool:
        deadline = time.monotonic() + self._wait
        delay = 0.001
        while True:
            replayed = await conn.fetchval(REPLAY_LSN, timeout=CHECK_TIMEOUT)
            if replayed is None:
                return False  # not a standby (promoted?): its data may be anything
            if replayed >= target:
                return True
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _count(self, outcome: str) -> None:
        if self._reads is not None:
            self._reads.labels(outcome).inc()

    def _failed(self, exc: BaseException) -> None:
        if self.state.up:
            log.warning("read replica failed (%s); reading from the primary", exc)
        # Until the monitor finds it answering again: a dead replica costs every read a
        # connection attempt otherwise.
        self.state = ReplicaState(up=False, error=str(exc) or type(exc).__name__)

    async def monitor(self) -> None:
        """Measures the lag every MONITOR_SECONDS until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(MONITOR_SECONDS)

    async def check(self) -> ReplicaState:
        """One round of the monitor: the primary's position, then the replica's."""
        replica = self._replica
        if replica is None:
            return self.state
        now = time.monotonic()
        try:
            primary = int(await self._primary.fetchval(PRIMARY_LSN, timeout=CHECK_TIMEOUT))
        except REPLICA_ERRORS as exc:
            # The primary's own trouble, on its own /readyz entry: nothing to measure.
            log.debug("replica lag not measured, the primary did not answer: %s", exc)
            return self.state
        self._samples.append((now, primary))
        try:
            async with replica.acquire(timeout=CHECK_TIMEOUT) as conn:
                row = await conn.fetchrow(REPLICA_STATE, timeout=CHECK_TIMEOUT)
        except REPLICA_ERRORS as exc:
            was_up = self.state.up
            self.state = ReplicaState(up=False, error=str(exc) or type(exc).__name__)
            if was_up:
                log.warning("read replica unreachable (%s); reading from the primary", exc)
            return self.state
        assert row is not None
        if row["replayed"] is None:
            self.state = ReplicaState(up=False, error="not a standby (pg_is_in_recovery false)")
            return self.state
        replayed = int(row["replayed"])
        while self._samples and self._samples[0][1] <= replayed:
            self._samples.popleft()
        # Lag in time: since the oldest moment the primary had written something the
        # replica still lacks (0 when it has it all). Unlike now() minus the last
        # replayed commit's time, it does not grow while the primary is idle.
        lag_seconds = now - self._samples[0][0] if self._samples else 0.0
        if not self.state.up:
            log.info("read replica answering again")
        self.state = ReplicaState(
            up=True,
            lag_bytes=max(0, primary - replayed),
            lag_seconds=max(0.0, lag_seconds),
            paused=bool(row["paused"]),
        )
        return self.state

    async def probe(self) -> str:
        """The /readyz entry. Never fails readiness: every read this process makes on
        the replica is answered by the primary while the replica is away."""
        return self.state.describe()


READS = web.AppKey("replica_reads", ReplicaReads)


def replica_ctx() -> CleanupCtx:
    """After postgres_ctx. A replica that is down at start-up does not stop the service
    (its pool connects on first use; reads go to the primary meanwhile)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        pool = await create_read_pool(settings) if settings.database_read_url else None
        reads = ReplicaReads(app[DB], pool, app[OPS].registry)
        app[READS] = reads
        if pool is None:
            yield
            return
        log.info("reading from the replica at %s", mask_url(settings.database_read_url))
        await reads.check()
        app[OPS].checks.append(Check("postgres-replica", reads.probe, critical=False))
        try:
            async with app[SUPERVISOR].running(
                Child("replica-monitor", reads.monitor, critical=False)
            ):
                yield
        finally:
            await pool.close()

    return ctx
