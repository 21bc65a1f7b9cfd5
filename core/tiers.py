"""Fan-out tiers by follower count, shared by fan-out (how to write), the API server
(which authors to merge at read time) and the gateways (which `a:{author}` channels to
follow), so all agree. The pull-tier rule is stated here once, in Python
(Thresholds.tier) and in SQL (pull_tier_sql); nothing else spells it.

Thresholds come from settings and can be changed at runtime in Redis (hash
`keys.FANOUT_CONFIG`, fields push_max / throttle_max); one author's tier can be forced
with users.fanout_tier. Both are set with `python -m fanout.admin`.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core import keys
from core.clients import REDIS_DOWN
from core.settings import Settings

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5.0


class Tier(enum.StrEnum):
    PUSH = "push"  # write every follower's timeline
    THROTTLE = "throttle"  # write every follower's timeline, rate-limited
    PULL = "pull"  # no per-follower writes; readers merge, gateways use a:{author}


@dataclass(frozen=True, slots=True)
class Thresholds:
    push_max: int
    throttle_max: int

    def tier(self, follower_count: int, override: str | None) -> Tier:
        if override is not None:
            return Tier(override)
        if follower_count < self.push_max:
            return Tier.PUSH
        if follower_count <= self.throttle_max:
            return Tier.THROTTLE
        return Tier.PULL  # pull_tier_sql says the same


def pull_tier_sql(users: str, throttle_max: str) -> str:
    """Thresholds.tier(...) is Tier.PULL, as a SQL condition on the `users` row named
    `users` (a table alias), with Thresholds.throttle_max passed as the parameter
    `throttle_max` (such as "$2")."""
    return (
        f"({users}.fanout_tier = 'pull'"
        f" OR ({users}.fanout_tier IS NULL AND {users}.follower_count > {throttle_max}))"
    )


class TierPolicy:
    """Current thresholds: settings, overridden by Redis, re-read every few seconds."""

    def __init__(self, settings: Settings, redis_client: aioredis.Redis | RedisCluster) -> None:
        self._defaults = Thresholds(settings.fanout_push_max, settings.fanout_throttle_max)
        self._redis = redis_client
        self._current = self._defaults
        self._read_at = 0.0

    async def thresholds(self) -> Thresholds:
        if time.monotonic() - self._read_at > REFRESH_SECONDS:
            self._read_at = time.monotonic()
            try:
                raw = await self._redis.hgetall(keys.FANOUT_CONFIG)
            except REDIS_DOWN as exc:
                log.warning("tier thresholds from settings (Redis unavailable: %s)", exc)
                return self._current
            self._current = Thresholds(
                int(raw.get(b"push_max", self._defaults.push_max)),
                int(raw.get(b"throttle_max", self._defaults.throttle_max)),
            )
        return self._current


# Every pull-tier author ($1: Thresholds.throttle_max).
PULL_AUTHORS_SQL = f"SELECT id FROM users WHERE {pull_tier_sql('users', '$1')}"
