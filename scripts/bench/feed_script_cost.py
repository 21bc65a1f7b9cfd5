"""Redis's own time per home feed page, stage by stage of server/feed/lua/feed_page.lua.

    .venv/bin/python -m scripts.bench.feed_script_cost [--users 200] [--rounds 5]
        [--variant path/to/feed_page_variant.lua ...]

The feed read path makes one script call per page, and the one Redis is the part of it
that does not scale out, so this is where a page's cost to Redis is looked at. Each
sampled user's first page is asked with the arguments the server sends
(`timeline_store.page_call`, the pull-tier posts from `Celebrities.held`). The script is
then cut after each `--@stage` line's stage (`do return 0 end` before the next one), and
every cut runs the same calls, cuts alternating, round after round. Redis's
`INFO commandstats` time for EVALSHA, per call, is printed for each cut (the median over
the rounds) with the difference from the cut before: what the stage adds. The commands
the script runs inside are given apart, so what is left of a stage is Lua's own work
(arguments and replies made into Lua strings, loops, patterns).

A `--variant` file is timed whole beside the script, on the same calls, after a check
that it answers every call as the script does.

Uses the feed benchmark's data (`scripts.bench.seed`) in its Redis db; the caches a page
needs (following sets, counters) must be warm, so run `scripts.bench.feed_read` first.
Only calls the script answers on its fast path are timed. Resets Redis's statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from core.lean_redis import Arg
from core.settings import Settings
from core.tiers import TierPolicy
from scripts.bench import common
from scripts.bench.progress import note
from scripts.bench.server_proc import ServerConfig
from server.feed import timeline_reads as store
from server.feed.home import Celebrities

STAGE = re.compile(r"^--@stage (.+)$", re.MULTILINE)
PAGE_SIZE = 20
Call = tuple[list[Arg], list[Arg]]


def cuts(text: str) -> dict[str, str]:
    """The script stopped before each stage (the first: its arguments only), then whole,
    by the name of the last stage each one runs."""
    marks = list(STAGE.finditer(text))
    if not marks:
        raise common.BenchError("feed_page.lua has no --@stage lines to cut at")
    found = {"arguments only": text[: marks[0].start()] + "do return 0 end\n"}
    for mark, after in itertools.pairwise(marks):
        found[mark.group(1)] = text[: after.start()] + "do return 0 end\n" + text[after.start() :]
    found[marks[-1].group(1)] = text
    return found


async def sample_calls(settings: Settings, client: aioredis.Redis, users: int) -> list[Call]:
    db = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        ids = [
            r[0]
            for r in await db.fetch("SELECT id FROM users ORDER BY md5(id::text) LIMIT $1", users)
        ]
        celebs = Celebrities(db, TierPolicy(settings, client))
        authors = await celebs.ids()
        calls = []
        for user in ids:
            held = await celebs.held(authors, None, PAGE_SIZE + 1)
            calls.append(store.page_call(user, None, PAGE_SIZE, authors, held))
        return calls
    finally:
        await db.close()


async def per_call(client: aioredis.Redis, sha: str, calls: Sequence[Call]) -> dict[str, float]:
    """Redis's microseconds per call, for EVALSHA and each command run inside it."""
    await client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for names, args in calls:
        pipe.evalsha(sha, len(names), *names, *args)
    await pipe.execute()
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): float(v["usec"]) / len(calls)
        for name, v in stats.items()
        if name.startswith("cmdstat_") and name != "cmdstat_config|resetstat"
    }


async def run(users: int, rounds: int, variants: list[Path]) -> None:
    # What the benchmarked server runs with: the bench database and Redis db, and the
    # tier thresholds the bench timelines were built for.
    base = common.base_settings()
    server = ServerConfig(
        common.database_url(base.database_url, common.BENCH_DB),
        common.redis_url(base.redis_url, common.BENCH_REDIS_DB),
        common.BENCH_PORT,
        common.THROTTLE_MAX,
    )
    settings = Settings.from_env(server.env())
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        calls = await sample_calls(settings, client, users)
        fast = []
        for names, args in calls:
            reply = await client.eval(store.FEED_PAGE_SCRIPT.text, len(names), *names, *args)
            if reply[0] == 1:
                fast.append((names, args, reply))
        note(f"{len(fast)} of {len(calls)} first pages on the script's fast path")
        if len(fast) < len(calls) / 2:
            raise common.BenchError(
                "most pages need the general path: warm the caches with scripts.bench.feed_read"
            )
        timed = [(names, args) for names, args, _ in fast]
        scripts = cuts(store.FEED_PAGE_SCRIPT.text)
        for path in variants:
            text = path.read_text()
            for names, args, reply in fast:
                if await client.eval(text, len(names), *names, *args) != reply:
                    raise common.BenchError(f"{path} answers a page differently from the script")
            scripts[f"variant: {path.name}"] = text
        shas = {name: await client.script_load(text) for name, text in scripts.items()}
        found: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
        for n in range(rounds):
            for name, sha in shas.items():
                found[name].append(await per_call(client, sha, timed))
            note(f"round {n + 1}/{rounds}")
    finally:
        await client.aclose()
    report(found, len(timed), rounds)


def report(found: dict[str, list[dict[str, float]]], calls: int, rounds: int) -> None:
    def median(name: str, command: str) -> float:
        return statistics.median(r.get(command, 0.0) for r in found[name])

    print(f"Redis time per first page, us (`INFO commandstats`), {calls} pages x {rounds} rounds")
    print("\n| the script run up to and including | EVALSHA | the stage adds |")
    print("|---|--:|--:|")
    before = 0.0
    for name in found:
        total = median(name, "evalsha")
        added = "" if name.startswith("variant") else f"{total - before:+.1f}"
        print(f"| {name} | {total:.1f} | {added} |")
        if not name.startswith("variant"):
            before, whole = total, name
    inside = sorted({c for r in found[whole] for c in r} - {"evalsha"})
    print("\nCommands run inside the whole script, per page (part of the EVALSHA time):")
    for command in inside:
        print(f"- {command}: {median(whole, command):.1f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=200, help="users whose first page is asked")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variant", type=Path, action="append", default=[], help="a script to time")
    args = p.parse_args()
    try:
        asyncio.run(run(args.users, args.rounds, args.variant))
    except common.BenchError as exc:
        raise SystemExit(f"feed_script_cost: {exc}") from None


if __name__ == "__main__":
    main()
