"""Which pull-tier authors a connecting user follows (their `a:{author}` channels are
subscribed while the user is here). The lookups of a burst of connects are answered by
one `= ANY($1)` query per CHUNK users, not one query (and one pool checkout and reset)
per connection."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import asyncpg

from core.tiers import TierPolicy, pull_tier_sql

log = logging.getLogger(__name__)
CHUNK = 1000
BATCH_DELAY = 0.002
LOOKUP_TIMEOUT = 10.0
FOLLOWED_PULL_AUTHORS = f"""
SELECT f.follower_id, f.followee_id FROM follows f JOIN users u ON u.id = f.followee_id
 WHERE f.follower_id = ANY($1::bigint[]) AND {pull_tier_sql("u", "$2")}
"""
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class AuthorsUnavailable(ConnectionError):
    """Postgres did not answer the lookup in time."""


class PullAuthors:
    def __init__(
        self, db: asyncpg.Pool, tiers: TierPolicy, timeout: float = LOOKUP_TIMEOUT
    ) -> None:
        self._db = db
        self._tiers = tiers
        self.timeout = timeout
        self._queued: dict[int, list[asyncio.Future[list[int]]]] = {}
        self._kick = asyncio.Event()

    async def of(self, user: int) -> list[int]:
        """The pull-tier authors `user` follows; raises AuthorsUnavailable."""
        waiter: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(user, []).append(waiter)
        self._kick.set()
        try:
            return await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            raise AuthorsUnavailable(f"no answer from Postgres in {self.timeout:g} s") from None

    async def run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(BATCH_DELAY)  # let a burst of connects accumulate
            queued, self._queued = self._queued, {}
            try:
                await self._answer_all(queued)
            except BaseException:
                self._fail(queued, AuthorsUnavailable("lookup interrupted"))
                raise

    async def _answer_all(self, queued: dict[int, list[asyncio.Future[list[int]]]]) -> None:
        users = list(queued)
        for start in range(0, len(users), CHUNK):
            chunk = {u: queued[u] for u in users[start : start + CHUNK]}
            try:
                found = await self._lookup(list(chunk))
            except DB_ERRORS as exc:
                log.warning("pull-tier authors of %d users not read: %s", len(chunk), exc)
                self._fail(chunk, AuthorsUnavailable(str(exc)))
                continue
            for user, waiters in chunk.items():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(found.get(user, []))

    async def _lookup(self, users: list[int]) -> dict[int, list[int]]:
        thresholds = await self._tiers.thresholds()
        rows = await self._db.fetch(FOLLOWED_PULL_AUTHORS, users, thresholds.throttle_max)
        found: defaultdict[int, list[int]] = defaultdict(list)
        for row in rows:
            found[row["follower_id"]].append(row["followee_id"])
        return found

    @staticmethod
    def _fail(chunk: dict[int, list[asyncio.Future[list[int]]]], exc: Exception) -> None:
        for waiters in chunk.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
