"""Seeding users, follows, timelines and post events straight into the real stores, for
tests that need more data than the API would create quickly."""

import uuid

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from core import events, keys
from core.ids import IdGenerator, id_timestamp_ms
from core.topics import Topics


async def seed_users(db: asyncpg.Pool, ids: IdGenerator, count: int) -> list[int]:
    users = [ids.next_id() for _ in range(count)]
    tag = uuid.uuid4().hex[:6]
    await db.copy_records_to_table(
        "users",
        columns=["id", "handle", "password_hash"],
        records=[(u, f"w{tag}{n}", "x") for n, u in enumerate(users)],
    )
    return users


async def build_timelines(redis_client: aioredis.Redis, users: list[int]) -> None:
    for start in range(0, len(users), 5000):
        pipe = redis_client.pipeline(transaction=False)
        for user in users[start : start + 5000]:
            pipe.zadd(keys.timeline(user), {keys.timeline_member(0): 0})
        await pipe.execute()


async def publish_post(
    db: asyncpg.Pool,
    producer: AIOKafkaProducer,
    topics: Topics,
    ids: IdGenerator,
    author: int,
    partition: int | None = None,
) -> int:
    post_id = ids.next_id()
    await db.execute(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'worker test')", post_id, author
    )
    event = events.PostCreated(
        post_id=post_id, author_id=author, created_at_ms=id_timestamp_ms(post_id)
    )
    await producer.send_and_wait(
        topics.posts, events.encode(event), key=str(author).encode(), partition=partition
    )
    return post_id


async def holders(redis_client: aioredis.Redis, users: list[int], post_id: int) -> int:
    member = keys.timeline_member(post_id)
    found = 0
    for start in range(0, len(users), 5000):
        pipe = redis_client.pipeline(transaction=False)
        for user in users[start : start + 5000]:
            pipe.zscore(keys.timeline(user), member)
        found += sum(score is not None for score in await pipe.execute())
    return found
