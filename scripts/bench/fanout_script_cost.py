"""What fan-out's per-follower Redis time is made of: the timeline script against its
bare ZADD, in Redis's own accounting.

    .venv/bin/python -m scripts.bench.fanout_script_cost [--redis-db 7] [--posts 20]

Fan-out is Redis-bound (see BENCHMARKS.md), so the question is how far the script's
cost per follower can still fall. On 10 000 timelines, first holding only the sentinel
(they grow by one entry per post) and then full (800 entries, trim slack 64), one post
at a time goes to all 10 000 through each variant, variants alternating, and Redis's
`INFO commandstats` time for the EVALSHA is divided by the followers:

- `script`: fanout/lua/timeline_add.lua as the worker runs it (nobody online, no
  devices);
- `chunked`: the same with existence asked once per 16 followers (one multi-key
  EXISTS) and the size looked at on about one write in 16 (a hash of post and user), so
  a follower costs one ZADD instead of ZCARD + ZADD;
- `zadd`: one ZADD per follower and nothing else, the floor for any script.

Uses its own Redis db (flushed before and after) of the local stack (`make setup`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import redis.asyncio as aioredis

from core import keys
from core.settings import Settings
from fanout.writer import CHANNEL_PREFIX, LUA_DIR
from scripts.bench import common
from scripts.bench.progress import note

FOLLOWERS = 10_000
CAP, SLACK = 800, 64

CHUNKED = """
local n = #KEYS / 2
local member, cap, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local written, every = 0, 16
local post_mix = tonumber(string.sub(member, -9))
for first = 1, n, 16 do
  local last = math.min(first + 15, n)
  local all_built = redis.call('EXISTS', unpack(KEYS, first, last)) == last - first + 1
  local anyone_online = redis.call('EXISTS', unpack(KEYS, n + first, n + last)) > 0
  for i = first, last do
    if all_built or redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('ZADD', KEYS[i], 0, member) == 1 then
        written = written + 1
        if (post_mix + tonumber(string.sub(ARGV[6 + i], -9))) % every == 0 then
          local size = redis.call('ZCARD', KEYS[i])
          if size > limit then redis.call('ZREMRANGEBYRANK', KEYS[i], 0, size - cap - 1) end
        end
      end
    end
  end
end
return {written, 0, {}}
"""

ZADD_ONLY = """
local n, written = #KEYS / 2, 0
for i = 1, n do written = written + redis.call('ZADD', KEYS[i], 0, ARGV[1]) end
return {written, 0, {}}
"""


async def fill(client: aioredis.Redis, full: bool) -> None:
    await client.flushdb()
    pipe = client.pipeline(transaction=False)
    for user in range(1, FOLLOWERS + 1):
        if full:
            old = range(10**15 + user * 1000, 10**15 + user * 1000 + CAP)
            pipe.zadd(keys.timeline(user), {keys.timeline_member(p): 0 for p in old})
        else:
            pipe.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
        if len(pipe) >= 200:
            await pipe.execute()
    await pipe.execute()


async def cost(client: aioredis.Redis, sha: str, post_id: int) -> float:
    """Redis's own microseconds per follower for one post to every follower."""
    followers = range(1, FOLLOWERS + 1)
    names = [keys.timeline(u) for u in followers] + [keys.presence(u) for u in followers]
    args: list[bytes | str | int] = [
        keys.timeline_member(post_id),
        CAP,
        CAP + SLACK,
        b"x" * 300,
        CHANNEL_PREFIX,
    ]
    await client.config_resetstat()
    reply = await client.evalsha(sha, len(names), *names, *args, b"0" * FOLLOWERS, *followers)
    assert int(reply[0]) == FOLLOWERS, f"wrote {reply[0]} of {FOLLOWERS}"
    stats = await client.info("commandstats")
    return int(stats["cmdstat_evalsha"]["usec"]) / FOLLOWERS


async def run(db: int, posts: int) -> None:
    # The db must be in the URL: from_url lets the URL's own path (/0 in the stack's
    # REDIS_URL) override a db= argument, and this flushes the db it uses.
    client = aioredis.Redis.from_url(common.redis_url(Settings.from_env().redis_url, db))
    variants = {
        "script": (LUA_DIR / "timeline_add.lua").read_text(),
        "chunked": CHUNKED,
        "zadd": ZADD_ONLY,
    }
    shas = {name: await client.script_load(text) for name, text in variants.items()}
    post_id = 1 << 58
    print(f"| timelines | {' | '.join(variants)} |")
    print(f"|---|{'---:|' * len(variants)}")
    try:
        for full in (False, True):
            await fill(client, full)
            found: dict[str, list[float]] = {name: [] for name in variants}
            for n in range(posts):
                for name, sha in shas.items():
                    post_id += 7919 * 4096 + 12_345  # snowflake-like low digits
                    found[name].append(await cost(client, sha, post_id))
                note(f"{'full' if full else 'sentinel-only'}: post {n + 1}/{posts}")
            cells = [
                f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in found.values()
            ]
            label = f"full ({CAP}-{CAP + SLACK})" if full else "sentinel-only, growing"
            print(f"| {label} | {' | '.join(cells)} |")
    finally:
        await client.flushdb()
        await client.aclose()
    print("\nus of Redis time per follower: median (range) over the posts")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--redis-db", type=int, default=7, help="flushed before and after")
    p.add_argument("--posts", type=int, default=20, help="posts per variant and timeline state")
    args = p.parse_args()
    if args.redis_db in common.TAKEN_REDIS_DBS:
        p.error(f"Redis db {args.redis_db} belongs to dev, the feed bench or the tests")
    asyncio.run(run(args.redis_db, args.posts))


if __name__ == "__main__":
    main()
