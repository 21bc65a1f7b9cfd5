"""Feed pages, or fan-out's timeline writes, per Redis CPU-second: a 3-master Redis
Cluster beside one Redis, same run.

    .venv/bin/python -m scripts.bench.cluster_feed [--readers 2000] [--posts 200]
        [--authors 300] [--seconds 10] [--concurrency 32] [--rounds 3] [--rate 800]
    .venv/bin/python -m scripts.bench.cluster_feed --writes [--followers 10000]
        [--seconds 10] [--rounds 3]

What a feed page costs Redis is the part of a page that does not scale out on one
Redis: issue 24 wants a cluster to keep at least 0.8 of one Redis's per-core efficiency.
Both Redis setups are private (started here, on free ports) and get the same data: each
reader's timeline (`--posts` posts of followed authors and a sentinel), following set
and every post's cached counters; the page's bodies are held by the server process in
steady state, so a page's Redis work is server/feed/timeline_reads.read_page: on one
Redis one script call (LeanRedis), on the cluster the page script on the reader's node,
one counters read per node and an SMISMEMBER (LeanCluster). `--concurrency` readers ask
at `--rate` pages/s in all, the same for both setups (a Redis answers more commands
per wake-up under more load, so per-page costs compare at equal load). Redis CPU is
`INFO cpu` (user + sys) summed over the nodes before and after each timed run; the two
setups alternate for `--rounds`.
Prints pages per Redis CPU-second for each and their ratio (cluster / single).

--writes measures fan-out instead (fanout/writer.TimelineWriter, as the worker calls it,
one call after another): `--followers` timelines filled to the cap (spread over cap ..
cap + slack, the steady state, so writes pay their share of trims), everyone offline,
and two shapes each timed on its own: a big author's post into every follower in
batches of FANOUT_BATCH_SIZE (`add`), and small authors' posts grouped as the worker
groups them (`add_many`: --group posts of --per-author followers each, plus each
author's own timeline). Prints timeline writes per Redis CPU-second for each shape.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from core import keys, timelines
from core.clients import AnyRedis, build_redis_cluster
from core.lean_cluster import LeanCluster
from core.lean_redis import LeanClient, LeanRedis
from core.post_cache import encode_counters
from core.recent import Recent
from core.redis_address import RedisAddress
from core.settings import Settings
from fanout.writer import TimelineWriter
from scripts.bench.fanout_ceiling import FILL_TO_CAP, live_payload
from scripts.redis_cluster import redis_cluster, redis_cpu, single_redis
from server.feed import timeline_reads as store

PAGE = 20
PAYLOAD = live_payload()  # a live event the size of a real one


async def seed(client: AnyRedis, readers: int, posts: int, authors: int) -> list[int]:
    rng = random.Random(24)  # noqa: S311 - test data
    author_ids = list(range(10_000_000, 10_000_000 + authors))
    reader_ids = list(range(20_000_000, 20_000_000 + readers))
    next_post = 3_000_000_000
    for start in range(0, readers, 200):
        pipe = client.pipeline(transaction=False)
        for reader in reader_ids[start : start + 200]:
            followed = rng.sample(author_ids, 50)
            members: dict[bytes, int] = {timelines.SENTINEL: 0}
            for _ in range(posts):
                next_post += 1
                author = rng.choice(followed)
                members[keys.timeline_member(next_post)] = 0
                pipe.set(keys.post_counters(next_post), encode_counters(author, 1, 0, 0))
            pipe.zadd(keys.timeline(reader), members)
            pipe.sadd(keys.following(reader), "0", *map(str, followed))
        await pipe.execute()
    return reader_ids


async def pages_for(
    lean: LeanClient, readers: Sequence[int], seconds: float, concurrency: int, rate: float
) -> int:
    """Pages read for `seconds` by `concurrency` readers at `rate` pages/s in all (0: as
    fast as they can)."""
    rng = random.Random(7)  # noqa: S311 - which reader asks
    # As HomeFeed holds them on a cluster (server/feed/home.py).
    post_authors: Recent[int, bytes] | None = Recent(200_000) if lean.cluster else None
    started = time.monotonic()
    stop = started + seconds
    done = 0

    async def worker(first: int) -> None:
        nonlocal done
        due = started + first / rate if rate else 0.0
        while time.monotonic() < stop:
            if rate:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += concurrency / rate
            page = await store.read_page(
                lean, rng.choice(readers), None, PAGE, [], [], post_authors
            )
            assert isinstance(page, store.ReadyPage) and len(page.ids) == PAGE, page
            done += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


async def measure(
    client: AnyRedis,
    lean: LeanClient,
    readers: Sequence[int],
    seconds: float,
    concurrency: int,
    rate: float,
) -> tuple[int, float, float]:
    """(pages, Redis CPU-seconds they took, Redis CPU-seconds of as long idle: the
    nodes' own timers and, on a cluster, its bus)."""
    await pages_for(lean, readers, 1.0, concurrency, rate)  # scripts loaded, links open
    before = await redis_cpu(client)
    started = time.monotonic()
    pages = await pages_for(lean, readers, seconds, concurrency, rate)
    used = await redis_cpu(client) - before
    elapsed = time.monotonic() - started
    before = await redis_cpu(client)
    await asyncio.sleep(elapsed)
    idle = await redis_cpu(client) - before
    return pages, used, idle


FIRST_WRITE_POST = 9_000_000_000  # far above the seeded posts: each write is the newest


async def seed_timelines(client: AnyRedis, followers: int, cap: int, slack: int) -> list[int]:
    """`followers` timelines at the cap (cap .. cap + slack entries, spread evenly)."""
    users = list(range(30_000_000, 30_000_000 + followers))
    for start in range(0, followers, 16):  # within a client's connection bound
        chunk = users[start : start + 16]
        await asyncio.gather(
            *(client.eval(FILL_TO_CAP, 1, keys.timeline(u), cap + u % (slack + 1)) for u in chunk)
        )
    return users


async def writes_for(
    writer: TimelineWriter,
    users: Sequence[int],
    shape: str,
    seconds: float,
    args: argparse.Namespace,
) -> int:
    """Timeline writes made for `seconds` in `shape` ("big" or "small"), one call after
    another as a worker makes them."""
    rng = random.Random(11)  # noqa: S311 - who follows whom
    post = FIRST_WRITE_POST + int(time.time() * 1000) % 1_000_000_000 * 100
    stop = time.monotonic() + seconds
    written = 0
    while time.monotonic() < stop:
        if shape == "big":
            post += 1
            for start in range(0, len(users), args.batch_size):
                batch = users[start : start + args.batch_size]
                written += (await writer.add(post, PAYLOAD, batch)).written
            continue
        posts = []
        for _ in range(args.group):
            post += 1
            posts.append((post, PAYLOAD, rng.sample(users, args.per_author), frozenset[int]()))
        own = [(rng.choice(users), p[0]) for p in posts]
        results = await writer.add_many(posts, own)
        written += sum(r.written for r in results) + len(own)
    return written


async def measure_writes(
    client: AnyRedis, users: Sequence[int], shape: str, args: argparse.Namespace
) -> tuple[int, float, float]:
    """(timeline writes, Redis CPU-seconds they took, Redis CPU-seconds of as long idle)."""
    writer = TimelineWriter(client, args.cap, args.slack)
    await writes_for(writer, users, shape, 0.5, args)  # scripts loaded, links open
    before = await redis_cpu(client)
    started = time.monotonic()
    written = await writes_for(writer, users, shape, args.seconds, args)
    used = await redis_cpu(client) - before
    elapsed = time.monotonic() - started
    before = await redis_cpu(client)
    await asyncio.sleep(min(elapsed, 3.0))
    idle = (await redis_cpu(client) - before) * elapsed / min(elapsed, 3.0)
    return written, used, idle


async def main_writes(args: argparse.Namespace, single: AnyRedis, cluster: AnyRedis) -> None:
    users = await seed_timelines(single, args.followers, args.cap, args.slack)
    await seed_timelines(cluster, args.followers, args.cap, args.slack)
    rates: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for shape in ("big", "small"):
            for name, client in (("single", single), ("cluster", cluster)):
                written, used, idle = await measure_writes(client, users, shape, args)
                rates.setdefault((shape, name), []).append(written / used)
                print(
                    f"round {round_ + 1} {shape:5} {name:8} {written / used:9.0f} writes per "
                    f"Redis CPU-second ({written} writes, {used:.2f} s CPU, {idle:.2f} s of "
                    f"it idle cost; without it {written / max(used - idle, 1e-9):.0f})"
                )
    for shape in ("big", "small"):
        single_rates, cluster_rates = rates[shape, "single"], rates[shape, "cluster"]
        one, many = statistics.median(single_rates), statistics.median(cluster_rates)
        print(
            f"median {shape:5} single  {one:9.0f} writes per Redis CPU-second "
            f"{_spread(single_rates)}"
        )
        print(
            f"median {shape:5} cluster {many:9.0f} writes per Redis CPU-second "
            f"{_spread(cluster_rates)}"
        )
        print(
            f"{shape:5} per-core efficiency, cluster / single: {many / one:.2f} (target >= 0.8); "
            f"round by round {_ratios(single_rates, cluster_rates)}"
        )


def _ratios(single: Sequence[float], cluster: Sequence[float]) -> str:
    return " ".join(f"{c / s:.2f}" for s, c in zip(single, cluster, strict=True))


def _spread(rates: Sequence[float]) -> str:
    return f"(rounds {min(rates):.0f} .. {max(rates):.0f})"


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, single_redis(Path(tmp)) as single_url:
        (Path(tmp) / "cluster").mkdir()
        with redis_cluster(Path(tmp) / "cluster", masters=3) as local:
            single = aioredis.Redis.from_url(single_url)
            cluster = build_redis_cluster(local.url)
            await cluster.initialize()
            if args.writes:
                try:
                    await main_writes(args, single, cluster)
                finally:
                    await single.aclose()
                    await cluster.aclose()
                return
            readers = await seed(single, args.readers, args.posts, args.authors)
            await seed(cluster, args.readers, args.posts, args.authors)
            one = LeanRedis(RedisAddress.of(single))
            many = LeanCluster(RedisAddress.of_cluster(cluster))
            rates: dict[str, list[float]] = {"single": [], "cluster": []}
            try:
                for round_ in range(args.rounds):
                    for name, client, lean in (("single", single, one), ("cluster", cluster, many)):
                        pages, used, idle = await measure(
                            client, lean, readers, args.seconds, args.concurrency, args.rate
                        )
                        rates[name].append(pages / used)
                        print(
                            f"round {round_ + 1} {name:8} {pages / used:9.0f} pages per Redis "
                            f"CPU-second ({pages} pages, {used:.2f} s CPU, {idle:.2f} s of it "
                            f"idle cost; without it {pages / max(used - idle, 1e-9):.0f})"
                        )
            finally:
                await one.close()
                await many.close()
                await single.aclose()
                await cluster.aclose()
    single_rate = statistics.median(rates["single"])
    cluster_rate = statistics.median(rates["cluster"])
    print(
        f"median   single   {single_rate:9.0f} pages per Redis CPU-second "
        f"{_spread(rates['single'])}"
    )
    print(
        f"median   cluster  {cluster_rate:9.0f} pages per Redis CPU-second (3 masters) "
        f"{_spread(rates['cluster'])}"
    )
    print(
        f"per-core efficiency, cluster / single: {cluster_rate / single_rate:.2f} (target >= 0.8); "
        f"round by round {_ratios(rates['single'], rates['cluster'])}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=2000)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--authors", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate",
        type=float,
        default=800.0,
        help="pages/s for both setups (the same load: Redis batches more under more); 0: flat out",
    )
    defaults = Settings()
    writes = parser.add_argument_group("--writes: fan-out's timeline writes instead of pages")
    writes.add_argument("--writes", action="store_true")
    writes.add_argument("--followers", type=int, default=10_000, help="timelines written")
    writes.add_argument("--batch-size", type=int, default=defaults.fanout_batch_size)
    writes.add_argument("--per-author", type=int, default=100, help="a small author's followers")
    writes.add_argument("--group", type=int, default=20, help="small authors' posts per call")
    writes.add_argument("--cap", type=int, default=defaults.timeline_cap)
    writes.add_argument("--slack", type=int, default=defaults.timeline_trim_slack)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
