import subprocess

import asyncpg
import redis.asyncio as aioredis

from core import keys
from core.settings import Settings
from core.tiers import TierPolicy
from tests.support.env import run_module


def admin(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module(settings, "fanout.admin", *args, timeout=60)


async def test_tier_override_and_thresholds_apply_at_runtime(
    settings: Settings, db: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await db.execute(
        "INSERT INTO users (id, handle, password_hash) VALUES (424242, 'tier_me', 'x')"
    )
    done = admin(settings, "tier", "TIER_ME", "pull")
    assert done.returncode == 0, done.stderr
    assert "@tier_me (0 followers): tier pull" in done.stdout
    assert await db.fetchval("SELECT fanout_tier FROM users WHERE id = 424242") == "pull"
    assert admin(settings, "tier", "tier_me", "auto").returncode == 0
    assert await db.fetchval("SELECT fanout_tier FROM users WHERE id = 424242") is None

    assert admin(settings, "thresholds", "--push-max", "10", "--throttle-max", "20").returncode == 0
    thresholds = await TierPolicy(settings, redis_client).thresholds()
    assert (thresholds.push_max, thresholds.throttle_max) == (10, 20)
    assert thresholds.tier(15, None).value == "throttle"
    assert admin(settings, "thresholds", "--reset").returncode == 0
    assert await redis_client.exists(keys.FANOUT_CONFIG) == 0


def test_admin_errors_are_one_line(settings: Settings) -> None:
    missing = admin(settings, "tier", "nobody_at_all", "pull")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "fanout.admin: error: no user with handle 'nobody_at_all'"
    inverted = admin(settings, "thresholds", "--push-max", "30", "--throttle-max", "20")
    assert inverted.returncode == 1 and "must not exceed" in inverted.stderr
