"""Operator commands for fan-out tiers, applied at runtime (workers and API servers pick
them up within a few seconds, no restart):

    python -m fanout.admin tier <handle> push|throttle|pull|auto
    python -m fanout.admin thresholds [--push-max N] [--throttle-max N] [--reset]
    python -m fanout.admin show

With REDIS_CLUSTER=true the thresholds are written through a cluster client (their hash
lives on whichever node serves its slot; REDIS_URL names any node).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from core import keys
from core.clients import CONNECT_ERRORS, AnyRedis, build_redis, build_redis_cluster, cluster_options
from core.settings import Settings, SettingsError
from core.tiers import Tier

TIERS = [t.value for t in Tier] + ["auto"]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m fanout.admin", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    tier = commands.add_parser("tier", help="force one author's tier (auto: by follower count)")
    tier.add_argument("handle")
    tier.add_argument("tier", choices=TIERS)
    limits = commands.add_parser("thresholds", help="change tier thresholds for everyone")
    limits.add_argument("--push-max", type=int)
    limits.add_argument("--throttle-max", type=int)
    limits.add_argument("--reset", action="store_true", help="back to the settings' values")
    commands.add_parser("show", help="current thresholds and forced tiers")
    return root


async def set_tier(settings: Settings, handle: str, tier: str) -> str:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        row = await conn.fetchrow(
            "UPDATE users SET fanout_tier = $2 WHERE lower(handle) = lower($1) "
            "RETURNING handle, follower_count",
            handle,
            None if tier == "auto" else tier,
        )
    finally:
        await conn.close()
    if row is None:
        raise LookupError(f"no user with handle {handle!r}")
    return f"@{row['handle']} ({row['follower_count']} followers): tier {tier}"


async def set_thresholds(
    settings: Settings, push_max: int | None, throttle_max: int | None, reset: bool
) -> str:
    client = await _redis(settings)
    try:
        if reset:
            await client.delete(keys.FANOUT_CONFIG)
        stored = await client.hgetall(keys.FANOUT_CONFIG)
        current = {_text(k): int(v) for k, v in stored.items()}
        push = (
            push_max if push_max is not None else current.get("push_max", settings.fanout_push_max)
        )
        throttle = (
            throttle_max
            if throttle_max is not None
            else current.get("throttle_max", settings.fanout_throttle_max)
        )
        if push > throttle:
            raise ValueError("push-max must not exceed throttle-max")
        if not reset:
            await client.hset(
                keys.FANOUT_CONFIG, mapping={"push_max": push, "throttle_max": throttle}
            )
    finally:
        await client.aclose()
    return f"push below {push} followers, throttled up to {throttle}, pull above"


async def _redis(settings: Settings) -> AnyRedis:
    if not settings.redis_cluster:
        return build_redis(settings)
    cluster = build_redis_cluster(settings.redis_url, **cluster_options(settings))
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


async def show(settings: Settings) -> str:
    lines = [await set_thresholds(settings, None, None, reset=False)]
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT handle, fanout_tier FROM users "
            "WHERE fanout_tier IS NOT NULL ORDER BY handle LIMIT 1000"
        )
    finally:
        await conn.close()
    lines += [f"@{r['handle']}: {r['fanout_tier']} (forced)" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "tier":
            out = asyncio.run(set_tier(settings, args.handle, args.tier))
        elif args.command == "thresholds":
            out = asyncio.run(
                set_thresholds(settings, args.push_max, args.throttle_max, args.reset)
            )
        else:
            out = asyncio.run(show(settings))
    except (SettingsError, LookupError, ValueError) as exc:
        print(f"fanout.admin: error: {exc}", file=sys.stderr)
        return 1
    except CONNECT_ERRORS as exc:
        print(f"fanout.admin: error: cannot reach a store: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
