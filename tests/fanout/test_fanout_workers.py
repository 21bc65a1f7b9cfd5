"""Fan-out workers as real processes: killed mid-post, and sharing a consumer group.

A worker process is started before its test seeds the stores and is waited for after:
its start-up (imports, connections) overlaps the seeding. Nothing it reads at start
depends on the seed: followers, tiers and timelines are read per event."""

import asyncio
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from core import events, keys
from core.clients import create_producer
from core.ids import IdGenerator
from core.settings import Settings
from core.topics import Topics
from tests.support.procs import get, start_service, wait_ready
from tests.support.seed import build_timelines, holders, publish_post, seed_users
from tests.support.wait import eventually

pytestmark = pytest.mark.slow
FOLLOWERS = 50_000


def partitions(port: int) -> int:
    """Partitions a worker process reports consumer lag for (= holds)."""
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    return body.decode().count("fanout_consumer_lag{")


async def assigned(port: int) -> None:
    async def check() -> bool:
        return partitions(port) > 0

    await eventually(check, seconds=60, what="partitions assigned")


class Workers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"fanout-{uuid.uuid4().hex[:8]}"
        self.procs: list[tuple[subprocess.Popen[str], int]] = []

    def spawn(self, **env: str) -> tuple[subprocess.Popen[str], int]:
        """Starts a worker process; `ready` waits for it."""
        proc, port = start_service(
            "fanout", self.settings, FANOUT_GROUP=self.group, FANOUT_OFFSET_RESET="latest", **env
        )
        self.procs.append((proc, port))
        return proc, port

    @staticmethod
    def ready(*workers: tuple[subprocess.Popen[str], int]) -> None:
        for proc, port in workers:
            wait_ready(proc, port)

    def start(self, **env: str) -> tuple[subprocess.Popen[str], int]:
        worker = self.spawn(**env)
        self.ready(worker)
        return worker

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    pool = Workers(settings)
    yield pool
    pool.stop_all()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = await create_producer(settings)
    yield p
    await p.stop()


def metric(port: int, name: str) -> float:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    match = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_worker_killed_mid_fanout_resumes_and_every_follower_gets_the_post_once(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: aioredis.Redis,
    producer: AIOKafkaProducer,
    workers: Workers,
) -> None:
    # Throttled tier at 10 000 writes/s: the post takes ~5 s, time enough to kill mid-way.
    throttled = {"FANOUT_BATCH_SIZE": "1000", "FANOUT_THROTTLE_RATE": "10000"}
    first, first_port = workers.spawn(**throttled)
    ids = IdGenerator(1021)
    author, *followers = await seed_users(db, ids, FOLLOWERS + 1)
    await db.copy_records_to_table(
        "follows", columns=["follower_id", "followee_id"], records=[(f, author) for f in followers]
    )
    await db.execute(
        "UPDATE users SET follower_count = $2, fanout_tier = 'throttle' WHERE id = $1",
        author,
        FOLLOWERS,
    )
    await build_timelines(redis_client, followers)
    workers.ready((first, first_port))
    await assigned(first_port)
    post_id = await publish_post(db, producer, Topics.for_settings(settings), ids, author)

    checkpoint = keys.fanout_checkpoint(post_id)

    async def midway() -> bool:
        value = await redis_client.get(checkpoint)
        return value is not None and int(value) >= followers[10_000]

    await eventually(midway, seconds=60, what="fan-out under way")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before = await holders(redis_client, followers, post_id)
    assert 10_000 <= before < FOLLOWERS, before

    # The same throttled tier, five times faster: the rest need not take ~4 s to prove
    # it was resumed, not started over (the writes counted below).
    _, port = workers.start(**(throttled | {"FANOUT_THROTTLE_RATE": "50000"}))

    async def complete() -> bool:
        return await redis_client.get(checkpoint) is None and (
            await holders(redis_client, followers, post_id) == FOLLOWERS
        )

    await eventually(complete, seconds=90, what="fan-out completed after restart")
    # Resumed from the checkpoint rather than from the first follower.
    assert metric(port, "fanout_timeline_writes_total") <= FOLLOWERS - before + 1000
    # Exactly once: each timeline holds its sentinel and this one post, nothing else.
    pipe = redis_client.pipeline(transaction=False)
    for user in followers[:: FOLLOWERS // 500]:
        pipe.zcard(keys.timeline(user))
    assert set(await pipe.execute()) == {2}


async def test_two_workers_share_partitions_and_one_dying_loses_nothing(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: aioredis.Redis,
    producer: AIOKafkaProducer,
    workers: Workers,
) -> None:
    a, a_port = workers.spawn()
    b = workers.spawn()  # the two start together, as two replicas of a deployment do
    ids = IdGenerator(1020)
    authors = await seed_users(db, ids, 12)
    readers = await seed_users(db, ids, 12)
    await db.copy_records_to_table(
        "follows",
        columns=["follower_id", "followee_id"],
        records=list(zip(readers, authors, strict=True)),
    )
    await build_timelines(redis_client, readers)
    topics = Topics.for_settings(settings)
    workers.ready((a, a_port), b)
    b_port = b[1]

    async def shared() -> bool:
        return partitions(a_port) > 0 and partitions(b_port) > 0

    await eventually(shared, seconds=60, what="both workers assigned partitions")
    first = [await publish_post(db, producer, topics, ids, author) for author in authors]

    async def delivered(posts: list[int]) -> bool:
        for reader, post_id in zip(readers, posts, strict=True):
            if (
                await redis_client.zscore(keys.timeline(reader), keys.timeline_member(post_id))
                is None
            ):
                return False
        return True

    await eventually(lambda: delivered(first), seconds=60, what="first round delivered")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    second = [await publish_post(db, producer, topics, ids, author) for author in authors]
    await eventually(lambda: delivered(second), seconds=90, what="delivered after a worker died")
    await asyncio.sleep(0)


async def throttled_worker(
    db: asyncpg.Pool, redis_client: aioredis.Redis, workers: Workers, ids: IdGenerator, others: int
) -> tuple[int, int, list[int], list[int]]:
    """A worker throttled to 2 000 timeline writes/s, in batches of 500 (started first: its
    start overlaps the seeding), a throttle-tier author with 20 000 followers, and
    `others` more users. Returns (the worker's port once it has its partitions, the
    author, the others, the followers)."""
    worker = workers.spawn(FANOUT_BATCH_SIZE="500", FANOUT_THROTTLE_RATE="2000")
    big, *rest = await seed_users(db, ids, 20_001 + others)
    extra, followers = rest[:others], rest[others:]
    await db.copy_records_to_table(
        "follows", columns=["follower_id", "followee_id"], records=[(f, big) for f in followers]
    )
    await db.execute("UPDATE users SET fanout_tier = 'throttle' WHERE id = $1", big)
    await build_timelines(redis_client, followers)
    workers.ready(worker)
    await assigned(worker[1])
    return worker[1], big, extra, followers


async def test_a_throttled_author_does_not_hold_up_other_posts_on_its_partition(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: aioredis.Redis,
    producer: AIOKafkaProducer,
    workers: Workers,
) -> None:
    ids = IdGenerator(1019)
    _, big, (small,), followers = await throttled_worker(db, redis_client, workers, ids, 1)
    await db.execute(
        "INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2)", followers[0], small
    )
    topics = Topics.for_settings(settings)
    # Same partition, huge post first: in a strictly sequential partition the small post
    # would wait ~10 s behind it. The small one is sent once the huge one is under way
    # (in one Kafka batch, small posts would be delivered first anyway).
    huge = await publish_post(db, producer, topics, ids, big, partition=0)

    async def under_way() -> bool:
        return await redis_client.exists(keys.fanout_checkpoint(huge)) == 1

    await eventually(under_way, seconds=60, what="the huge fan-out under way")
    normal = await publish_post(db, producer, topics, ids, small, partition=0)

    async def normal_delivered() -> bool:
        member = keys.timeline_member(normal)
        return await redis_client.zscore(keys.timeline(followers[0]), member) is not None

    await eventually(normal_delivered, seconds=60, what="the small author's post")
    # The huge fan-out was still under way when the small post arrived.
    assert await redis_client.exists(keys.fanout_checkpoint(huge)) == 1
    assert await holders(redis_client, followers, huge) < len(followers)


async def test_a_delete_during_a_throttled_fanout_stops_it_and_is_applied_after_it(
    settings: Settings,
    db: asyncpg.Pool,
    redis_client: aioredis.Redis,
    producer: AIOKafkaProducer,
    workers: Workers,
) -> None:
    ids = IdGenerator(1017)
    port, big, _, followers = await throttled_worker(db, redis_client, workers, ids, 0)
    topics = Topics.for_settings(settings)
    post_id = await publish_post(db, producer, topics, ids, big)
    checkpoint = keys.fanout_checkpoint(post_id)

    async def under_way() -> bool:
        return await redis_client.exists(checkpoint) == 1

    await eventually(under_way, seconds=60, what="the fan-out under way")
    await db.execute("UPDATE posts SET deleted_at = now() WHERE id = $1", post_id)
    deleted = events.PostDeleted(post_id=post_id, author_id=big)
    await producer.send_and_wait(topics.posts, events.encode(deleted), key=str(big).encode())

    # Applied while the fan-out still ran, the delete's sweep (unthrottled) would finish
    # long before the fan-out (~10 s), which would then leave the post in most timelines.
    async def gone() -> bool:
        return await redis_client.exists(checkpoint) == 0 and (
            await holders(redis_client, followers, post_id) == 0
        )

    await eventually(gone, seconds=60, what="the post removed and its fan-out stopped")
    await asyncio.sleep(1)
    assert await holders(redis_client, followers, post_id) == 0
    assert metric(port, "fanout_timeline_writes_total") < len(followers) // 2
