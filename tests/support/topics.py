"""Reading what the services published to Kafka, for tests."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from core import events
from core.clients import kafka_common
from core.settings import Settings
from core.topics import Topics


async def posts_on_topic(settings: Settings, wanted: set[int], seconds: float) -> list[int]:
    """Post ids of every PostCreated event on the settings' posts topic, in topic order,
    read until all of `wanted` have come. Reads every partition directly (no group: a
    just-restarted broker's group coordinator can take a while)."""
    topic = Topics.for_settings(settings).posts
    consumer = AIOKafkaConsumer(
        **kafka_common(settings), group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    # The session's topics were created with settings.kafka_partitions partitions.
    consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka_partitions)])
    await consumer.seek_to_beginning()
    found: list[int] = []
    try:
        async with asyncio.timeout(seconds):
            while not wanted <= set(found):
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        try:
                            event = events.decode(message.value)
                        except events.EventDecodeError:
                            continue  # the dead-letter test's poison event shares the topic
                        if isinstance(event, events.PostCreated):
                            found.append(event.post_id)
    finally:
        await consumer.stop()
    return found
