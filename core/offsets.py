"""Which offset of each partition may be committed when some events of it are still being
handled in the background: never past the oldest unfinished one (at-least-once)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

log = logging.getLogger(__name__)


class OffsetTracker:
    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}
        self._pending: defaultdict[TopicPartition, set[int]] = defaultdict(set)
        self._committed: dict[TopicPartition, int] = {}

    def read(self, tp: TopicPartition, offset: int) -> None:
        """Everything up to `offset` was handled or handed to the background."""
        self._next[tp] = offset + 1

    def hold(self, tp: TopicPartition, offset: int) -> None:
        self._pending[tp].add(offset)

    def release(self, tp: TopicPartition, offset: int) -> None:
        self._pending[tp].discard(offset)

    def pending(self, tp: TopicPartition) -> int:
        return len(self._pending[tp])

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that moved since the last commit."""
        result = {}
        for tp, after_last in self._next.items():
            held = self._pending[tp]
            offset = min(held) if held else after_last
            if self._committed.get(tp) != offset:
                result[tp] = offset
        return result

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._next.pop(tp, None)
            self._pending.pop(tp, None)
            self._committed.pop(tp, None)


async def pin_new_partitions(
    consumer: AIOKafkaConsumer,
    pinned: set[TopicPartition],
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    commit: Callable[[dict[TopicPartition, int]], Awaitable[None]],
) -> None:
    """A partition the group never committed starts where the offset reset policy put
    it; commit that start at once, so a crash before the first commit resumes from
    there instead of applying the reset policy again (and skipping, with "latest")."""
    for tp in consumer.assignment() - pinned:
        if await consumer.committed(tp) is None:
            messages = batches.get(tp)
            start = messages[0].offset if messages else await consumer.position(tp)
            await commit({tp: start})
        pinned.add(tp)


async def commit(
    consumer: AIOKafkaConsumer, tracker: OffsetTracker, offsets: dict[TopicPartition, int]
) -> None:
    """Commit `offsets` and record them in `tracker`. A commit refused because the group
    moved on (rebalance) is only logged: the new owner re-delivers, and handlers are
    idempotent, so it costs duplicated work, never lost events."""
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
        tracker.committed(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit failed after rebalance: %s", exc)
