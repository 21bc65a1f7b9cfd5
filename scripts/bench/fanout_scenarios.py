"""The two end-to-end scenarios, against one running fan-out worker:

- "celebrity-ish": posts by the author every pool user follows; each is one PostCreated
  becoming `followers` timeline writes, batch after batch;
- "stream of normal authors": many posts by authors with ~100 followers each, produced as
  fast as the producer can, so the worker's per-post overheads dominate.

Each is timed from the first produce to the moment the worker's
`fanout_timeline_writes_total` has grown by exactly the writes the posts must cause (every
follower is active and has a timeline), and then checked in Redis.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from core import events, keys
from core.ids import IdGenerator, id_timestamp_ms
from core.topics import Topics
from scripts.bench import cpu
from scripts.bench.common import BenchError
from scripts.bench.fanout_common import POST_WORKER_ID, Target
from scripts.bench.fanout_redis import RedisTime, command_stats, delta
from scripts.bench.fanout_seed import Dataset
from scripts.bench.fanout_worker import Worker
from scripts.bench.progress import Progress, note

WRITES = "fanout_timeline_writes_total"
HIST_SUM = "fanout_post_to_timeline_seconds_sum"
HIST_COUNT = "fanout_post_to_timeline_seconds_count"
DEAD = "fanout_dead_letters_total"
STALL_SECONDS = 60.0  # no new write for this long: the worker is stuck, stop waiting
VERIFY_CHUNK = 10_000
VERIFY_POSTS = 200  # stream scenario: posts whose every follower is checked


@dataclass(slots=True)
class Run:
    """What every scenario needs: the bench's own clients and the running worker."""

    dataset: Dataset
    db: asyncpg.Pool
    redis: aioredis.Redis | RedisCluster
    producer: AIOKafkaProducer
    topics: Topics
    worker: Worker
    poll: float
    database: str  # for CPU accounting: backends of other databases are not ours
    redis_ports: tuple[int, ...]
    ids: IdGenerator

    @classmethod
    def create(
        cls,
        dataset: Dataset,
        db: asyncpg.Pool,
        redis: aioredis.Redis | RedisCluster,
        producer: AIOKafkaProducer,
        topics: Topics,
        worker: Worker,
        poll: float,
        target: Target,
    ) -> Run:
        ids = IdGenerator(POST_WORKER_ID)
        return cls(
            dataset,
            db,
            redis,
            producer,
            topics,
            worker,
            poll,
            target.db_name,
            target.redis_ports,
            ids,
        )


@dataclass(frozen=True, slots=True)
class Result:
    label: str
    posts: int
    writes: int  # timeline writes the worker reported in the window (= expected)
    seconds: float  # first produce -> last expected write seen
    produce_seconds: float  # first produce -> every produce acknowledged by Kafka
    mean_latency: float  # worker's own histogram: post id time -> end of its fan-out
    verified: str
    redis: RedisTime
    cpu: dict[str, float]  # group -> percent of one core over the window

    @property
    def writes_per_second(self) -> float:
        return self.writes / self.seconds if self.seconds > 0 else 0.0

    @property
    def posts_per_second(self) -> float:
        return self.posts / self.seconds if self.seconds > 0 else 0.0


async def insert_posts(run: Run, authors: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Post rows must exist before their events: the worker loads each post from Postgres
    (a missing one counts as deleted and is skipped)."""
    rows = [(run.ids.next_id(), author, text) for author in authors]
    async with run.db.acquire() as conn:
        await conn.copy_records_to_table("posts", records=rows, columns=["id", "author_id", "text"])
    return [(post_id, author) for post_id, author, _ in rows]


async def produce(run: Run, posts: Sequence[tuple[int, int]]) -> None:
    """Every event sent without waiting for the previous one (the producer batches them),
    then all acknowledgements awaited. Keyed by author, like the outbox relay does."""
    futures = []
    for post_id, author in posts:
        event = events.PostCreated(
            post_id=post_id, author_id=author, created_at_ms=id_timestamp_ms(post_id)
        )
        futures.append(
            await run.producer.send(
                run.topics.posts, events.encode(event), key=str(author).encode()
            )
        )
    await asyncio.gather(*futures)


async def _wait_for_writes(
    run: Run, start: dict[str, float], writes: int, posts: int, label: str
) -> tuple[float, dict[str, float]]:
    """Polls /metrics until `writes` more timeline writes and `posts` more handled posts;
    returns the monotonic time the last needed write was first seen, and the metrics."""
    progress = Progress(f"{label}: writes", writes, " writes")
    seen, last_change, done_at = 0.0, time.monotonic(), 0.0
    while True:
        await asyncio.sleep(run.poll)
        run.worker.check_alive()
        now_metrics = run.worker.metrics()
        now = time.monotonic()
        grown = now_metrics.get(WRITES, 0.0) - start.get(WRITES, 0.0)
        if grown > seen:
            progress.add(int(grown - seen))
            seen, last_change = grown, now
        if grown >= writes and not done_at:
            done_at = now
        # Observed at the very end of a post's handler (after its checkpoint is gone).
        handled = now_metrics.get(HIST_COUNT, 0.0) - start.get(HIST_COUNT, 0.0)
        if done_at and handled >= posts:
            progress.finish()
            return done_at, now_metrics
        if now_metrics.get(DEAD, 0.0) > start.get(DEAD, 0.0):
            raise BenchError(f"{label}: the worker dead-lettered events:\n{run.worker.log_tail()}")
        if now - last_change > STALL_SECONDS:
            raise BenchError(
                f"{label}: stuck at {seen:,.0f}/{writes:,} writes, {handled:.0f}/{posts} posts"
            )


async def _holders(
    client: aioredis.Redis | RedisCluster, users: Sequence[int], post_id: int
) -> int:
    member = keys.timeline_member(post_id)
    found = 0
    for start in range(0, len(users), VERIFY_CHUNK):
        pipe = client.pipeline(transaction=False)
        for user in users[start : start + VERIFY_CHUNK]:
            pipe.zscore(keys.timeline(user), member)
        found += sum(score is not None for score in await pipe.execute())
    return found


@dataclass(frozen=True, slots=True)
class Window:
    """One measured window: produce, then wait for the writes."""

    seconds: float
    produce_seconds: float
    before: dict[str, float]  # worker metrics
    after: dict[str, float]
    redis: RedisTime
    cpu: dict[str, float]

    def grown(self, name: str) -> float:
        return self.after.get(name, 0.0) - self.before.get(name, 0.0)


async def _timed(run: Run, label: str, posts: list[tuple[int, int]], expected: int) -> Window:
    """Produce `posts` and wait for `expected` writes, with Redis and CPU accounting."""
    metrics0 = run.worker.metrics()
    stats0 = await command_stats(run.redis)
    named = {run.worker.pid: "worker", os.getpid(): "bench"}
    cpu0 = cpu.snapshot(run.database, run.redis_ports)
    started = time.monotonic()
    await produce(run, posts)
    produced = time.monotonic() - started
    done_at, metrics1 = await _wait_for_writes(run, metrics0, expected, len(posts), label)
    spent = cpu.usage(cpu0, cpu.snapshot(run.database, run.redis_ports), named)
    window = time.monotonic() - started
    return Window(
        seconds=done_at - started,
        produce_seconds=produced,
        before=metrics0,
        after=metrics1,
        redis=delta(stats0, await command_stats(run.redis)),
        cpu={group: 100.0 * s / window for group, s in spent.items()},
    )


def _result(label: str, posts: int, window: Window, verified: str) -> Result:
    return Result(
        label=label,
        posts=posts,
        writes=int(window.grown(WRITES)),
        seconds=window.seconds,
        produce_seconds=window.produce_seconds,
        mean_latency=window.grown(HIST_SUM) / max(1.0, window.grown(HIST_COUNT)),
        verified=verified,
        redis=window.redis,
        cpu=window.cpu,
    )


async def warm_up(run: Run) -> None:
    """One small post first: the worker's pools, prepared statements and script cache
    warm up here instead of inside the first measured window."""
    posts = await insert_posts(run, run.dataset.authors[:1], "warm-up")
    await _timed(run, "warm-up", posts, run.dataset.shape.per_author)


async def celebrity(run: Run, count: int) -> Result:
    label = "celebrity"
    followers = len(run.dataset.pool)
    posts = await insert_posts(run, [run.dataset.celebrity] * count, "celebrity-ish post")
    note(f"{label}: {count} post(s) to {followers:,} followers each")
    window = await _timed(run, label, posts, followers * count)
    held = [await _holders(run.redis, run.dataset.pool, post_id) for post_id, _ in posts]
    if any(h != followers for h in held):
        raise BenchError(f"{label}: timelines holding each post: {held}, expected {followers}")
    verified = f"all {followers:,} timelines hold each of the {count} post(s)"
    return _result(label, count, window, verified)


async def _followers_of(run: Run, author: int) -> list[int]:
    rows = await run.db.fetch("SELECT follower_id FROM follows WHERE followee_id = $1", author)
    return [r["follower_id"] for r in rows]


async def _verify_sample(run: Run, posts: list[tuple[int, int]]) -> str:
    sample = random.Random(0).sample(posts, min(VERIFY_POSTS, len(posts)))  # noqa: S311 - a sample
    checked, missing = 0, 0
    for post_id, author in sample:
        followers = await _followers_of(run, author)
        held = await _holders(run.redis, followers, post_id)
        checked += len(followers)
        missing += len(followers) - held
    if missing:
        raise BenchError(f"stream: {missing} of {checked} sampled timelines miss their post")
    return f"{len(sample)} random posts: all {checked:,} of their followers' timelines hold them"


async def stream(run: Run, count: int) -> Result:
    label = "stream"
    authors = run.dataset.authors
    by = [authors[n % len(authors)] for n in range(count)]
    posts = await insert_posts(run, by, "normal post")
    per_author = Counter(by)
    expected = sum(per_author.values()) * run.dataset.shape.per_author
    note(f"{label}: {count:,} posts by {len(per_author):,} authors, {expected:,} writes expected")
    window = await _timed(run, label, posts, expected)
    verified = await _verify_sample(run, posts)
    return _result(label, count, window, verified)
