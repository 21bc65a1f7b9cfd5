import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from core.clients import build_consumer, create_admin, create_producer, ensure_topics
from core.settings import Settings


@pytest.fixture
async def topic(settings: Settings) -> AsyncIterator[str]:
    name = f"{settings.kafka_topic_prefix}probe-{uuid.uuid4().hex[:8]}"
    admin = await create_admin(settings)
    try:
        assert await ensure_topics(admin, [name], partitions=3) == [name]
        assert await ensure_topics(admin, [name], partitions=3) == []  # idempotent
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = await create_producer(settings)
    yield producer
    await producer.stop()


async def produce(producer: AIOKafkaProducer, topic: str, values: range) -> None:
    for value in values:
        await producer.send(topic, key=str(value % 5).encode(), value=str(value).encode())
    await producer.flush()


async def consume(
    settings: Settings, topic: str, group: str, count: int, commit: bool
) -> list[int]:
    consumer = build_consumer(settings, group, topic)
    await consumer.start()
    got: list[int] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=500)
                got.extend(int(m.value) for msgs in batch.values() for m in msgs)
        # Nothing beyond what we expect is waiting.
        extra = await consumer.getmany(timeout_ms=1000)
        got.extend(int(m.value) for msgs in extra.values() for m in msgs)
        if commit:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_group_resumes_from_committed_offsets(
    settings: Settings, topic: str, producer: AIOKafkaProducer
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    await produce(producer, topic, range(30))
    first = await consume(settings, topic, group, 30, commit=True)
    assert sorted(first) == list(range(30))

    # The group's committed offsets now sit at the end of every partition.
    check = build_consumer(settings, group)
    await check.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        ends = await check.end_offsets(partitions)
        committed = {tp: await check.committed(tp) for tp in partitions}
        assert committed == ends
        assert sum(ends.values()) == 30
    finally:
        await check.stop()

    await produce(producer, topic, range(30, 40))
    second = await consume(settings, topic, group, 10, commit=True)
    assert sorted(second) == list(range(30, 40)), "the group re-read committed messages"


async def test_uncommitted_messages_are_delivered_again(
    settings: Settings, topic: str, producer: AIOKafkaProducer
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    await produce(producer, topic, range(12))
    crashed = await consume(settings, topic, group, 12, commit=False)
    again = await consume(settings, topic, group, 12, commit=True)
    assert sorted(crashed) == sorted(again) == list(range(12))


async def test_order_is_kept_per_key(
    settings: Settings, topic: str, producer: AIOKafkaProducer
) -> None:
    await produce(producer, topic, range(50))
    got = await consume(settings, topic, f"g-{uuid.uuid4().hex[:8]}", 50, commit=False)
    for key in range(5):
        same_key = [v for v in got if v % 5 == key]
        assert same_key == sorted(same_key)
