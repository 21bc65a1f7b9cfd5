"""The pull-tier rule (core/tiers.py) at its boundaries, in Python and in SQL: fan-out
decides with the one, the API server and the gateways with the other, so they must agree."""

import asyncpg
import pytest

from core.tiers import Thresholds, Tier, pull_tier_sql

THRESHOLDS = Thresholds(push_max=10, throttle_max=20)
# (follower count, forced tier) -> tier
CASES = [
    (0, None, Tier.PUSH),
    (9, None, Tier.PUSH),
    (10, None, Tier.THROTTLE),  # push_max: no longer push
    (20, None, Tier.THROTTLE),  # throttle_max: still throttled
    (21, None, Tier.PULL),  # above throttle_max
    (10**9, None, Tier.PULL),
    (10**9, "push", Tier.PUSH),  # forced either way
    (0, "pull", Tier.PULL),
    (21, "throttle", Tier.THROTTLE),
]


@pytest.mark.parametrize(("count", "forced", "tier"), CASES)
def test_the_tier_follows_the_thresholds_unless_forced(
    count: int, forced: str | None, tier: Tier
) -> None:
    assert THRESHOLDS.tier(count, forced) is tier


async def test_the_sql_rule_agrees_with_the_python_one(db: asyncpg.Pool) -> None:
    rows = [(count, forced) for count, forced, _ in CASES]
    pulled = await db.fetch(
        "SELECT u.follower_count, u.fanout_tier"
        "  FROM unnest($1::bigint[], $2::text[]) AS u(follower_count, fanout_tier)"
        f" WHERE {pull_tier_sql('u', '$3')}",
        [count for count, _ in rows],
        [forced for _, forced in rows],
        THRESHOLDS.throttle_max,
    )
    expected = [(count, forced) for count, forced, tier in CASES if tier is Tier.PULL]
    assert [(r["follower_count"], r["fanout_tier"]) for r in pulled] == expected
