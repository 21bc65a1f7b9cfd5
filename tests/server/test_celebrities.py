"""Who is in the pull tier, as each API process holds it (server.feed.Celebrities): the
list goes stale every CELEB_CACHE_SECONDS and must then be read from Postgres by one
request, not by every request that arrives while the read is under way."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from core.settings import Settings
from core.tiers import PULL_AUTHORS_SQL, TierPolicy
from server.feed.home import Celebrities

PULL_USER = 7_100_000_000_000_001  # forced into the pull tier; followed by nobody


class CountingPool:
    """The real pool, counting the pull-tier queries and holding each one until
    `release` is set, so that other reads arrive while it is under way; `lost` makes
    them fail as they would with Postgres gone."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.pull_queries = 0
        self.release = asyncio.Event()
        self.lost = False

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        if query == PULL_AUTHORS_SQL:
            self.pull_queries += 1
            await self.release.wait()
            if self.lost:
                raise asyncpg.PostgresConnectionError("connection lost")
        return await self.pool.fetch(query, *args)


@pytest.fixture
async def pull_user(db: asyncpg.Pool) -> AsyncIterator[int]:
    await db.execute(
        "INSERT INTO users (id, handle, password_hash, fanout_tier) "
        "VALUES ($1, 'celeb_single', 'x', 'pull')",
        PULL_USER,
    )
    yield PULL_USER
    await db.execute("DELETE FROM users WHERE id = $1", PULL_USER)


async def test_a_stale_list_is_refreshed_by_one_read_while_the_others_use_it(
    settings: Settings, db: asyncpg.Pool, redis_client: aioredis.Redis, pull_user: int
) -> None:
    pool = CountingPool(db)
    celebs = Celebrities(pool, TierPolicy(settings, redis_client))  # type: ignore[arg-type]
    pool.release.set()
    assert pull_user in await celebs.ids()
    assert pool.pull_queries == 1

    celebs._fetched -= 3600  # stale
    pool.release.clear()
    reads = [asyncio.create_task(celebs.ids()) for _ in range(20)]
    await asyncio.sleep(0.05)
    # The first read is at Postgres; the other 19 answered at once from the held list.
    assert sum(task.done() for task in reads) == 19
    assert all(pull_user in task.result() for task in reads if task.done())
    assert pool.pull_queries == 2  # the first list, and this one refresh

    pool.release.set()
    await asyncio.gather(*reads)
    assert pool.pull_queries == 2
    assert pull_user in await celebs.ids()
    assert pool.pull_queries == 2  # fresh again: no query


async def test_reads_before_the_first_list_wait_for_it(
    settings: Settings, db: asyncpg.Pool, redis_client: aioredis.Redis, pull_user: int
) -> None:
    """An empty list would silently leave every pull-tier post out of the first pages, so
    reads arriving before any list is held each read it rather than take none."""
    pool = CountingPool(db)
    celebs = Celebrities(pool, TierPolicy(settings, redis_client))  # type: ignore[arg-type]
    reads = [asyncio.create_task(celebs.ids()) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in reads)
    pool.release.set()
    for ids in await asyncio.gather(*reads):
        assert pull_user in ids


async def test_a_failed_refresh_lets_the_next_read_try_again(
    settings: Settings, db: asyncpg.Pool, redis_client: aioredis.Redis, pull_user: int
) -> None:
    pool = CountingPool(db)
    pool.release.set()
    celebs = Celebrities(pool, TierPolicy(settings, redis_client))  # type: ignore[arg-type]
    assert pull_user in await celebs.ids()
    celebs._fetched -= 3600
    pool.lost = True
    with pytest.raises(asyncpg.PostgresConnectionError):
        await celebs.ids()
    pool.lost = False
    assert pull_user in await celebs.ids()  # not stuck "refreshing" forever
    assert pool.pull_queries == 3


async def test_the_pull_tier_query_can_be_answered_from_indexes(db: asyncpg.Pool) -> None:
    """Every API process asks it every few seconds: on a big `users` table a scan of every
    row would be the feed's slowest query. (A small table is scanned anyway, being
    cheaper, so the plan is asked for with scans discouraged.)"""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + PULL_AUTHORS_SQL.replace("$1", "1000"))
        )
    assert "Seq Scan" not in plan, plan
    assert "users_fanout_override" in plan, plan
