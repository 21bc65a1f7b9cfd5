"""The fan-out consumer loop: Kafka in, handlers, offsets out.

Partitions are processed concurrently, messages of one partition in order. Offsets are
committed only after every message before them is fully handled (at-least-once; the
handlers are idempotent). Infrastructure errors are retried until they pass; an event
that keeps failing for any other reason goes to the dead-letter topic with the reason
after MAX_ATTEMPTS, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from core import events
from core.clients import CONNECT_ERRORS
from core.ids import id_timestamp_ms
from core.offsets import OffsetTracker, pin_new_partitions
from core.stats import LatencyWindow
from core.topics import Topics
from fanout.handlers import Handlers
from fanout.metrics import FanoutMetrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_BACKOFF = 5.0
HEAVY_LANES = 2  # throttled-tier fan-outs running at once, beside the partition lanes


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are only given away between batches, after what is finished of them is
    committed and their background fan-outs are stopped."""

    def __init__(self, owner: FanoutConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._owner.lock:
            await self._owner.give_up(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{t.topic}/{t.partition}" for t in assigned))


class FanoutConsumer:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        handlers: Handlers,
        topics: Topics,
        metrics: FanoutMetrics,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._handlers = handlers
        self._topics = topics
        self._metrics = metrics
        self.lock = asyncio.Lock()
        self._pinned: set[TopicPartition] = set()
        self._offsets = OffsetTracker()
        self._heavy_slots = asyncio.Semaphore(HEAVY_LANES)
        self._heavy: dict[asyncio.Task[None], TopicPartition] = {}
        self.assigned = asyncio.Event()
        # For the ops dashboard (fanout/stats.py): lag of the partitions held right now,
        # and post-to-timeline latency of the posts fanned out lately.
        self.lag: dict[TopicPartition, int] = {}
        self.post_to_timeline = LatencyWindow()

    @property
    def inputs(self) -> list[str]:
        return [self._topics.posts, self._topics.follows, self._topics.engagements]

    async def run(self) -> None:
        self._consumer.subscribe(self.inputs, listener=_HandOver(self))
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=1000, max_records=500)
                await pin_new_partitions(self._consumer, self._pinned, batches, self._commit)
                if self._consumer.assignment():
                    self.assigned.set()
                async with self.lock:
                    if batches:
                        await asyncio.gather(*(self._partition(m) for m in batches.values()))
                    # Also after background fan-outs finish with no new messages.
                    await self._commit(self._offsets.to_commit())
                await self._report_lag()
        finally:
            await self._cancel_heavy(set(self._heavy.values()))

    async def give_up(self, revoked: set[TopicPartition]) -> None:
        """Partitions leave this worker: stop their background fan-outs (their progress
        is checkpointed and their offsets were never committed past them, so the next
        owner resumes them) and commit what is finished."""
        await self._cancel_heavy(revoked)
        await self._commit({tp: o for tp, o in self._offsets.to_commit().items() if tp in revoked})
        self._offsets.forget(revoked)
        for tp in revoked:  # their lag is the next owner's to report now
            self.lag.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(tp.topic, str(tp.partition))
        self._pinned.difference_update(revoked)
        log.info("partitions revoked: %s", sorted(f"{t.topic}/{t.partition}" for t in revoked))

    async def _cancel_heavy(self, partitions: set[TopicPartition]) -> None:
        tasks = [task for task, tp in self._heavy.items() if tp in partitions]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._offsets.committed(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (rebalance): the new owner re-delivers, handlers are
            # idempotent, so this costs duplicates of work, never lost events.
            log.warning("commit failed after rebalance: %s", exc)

    async def _partition(self, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        for message in messages:
            tp = TopicPartition(message.topic, message.partition)
            try:
                event = events.decode(message.value or b"")
            except events.EventDecodeError as exc:
                await self._dead_letter(message, f"undecodable: {exc}", 1)
            else:
                if await self._handlers.is_heavy(event):
                    await self._start_heavy(tp, message, event)
                else:
                    await self._process(message, event)
            self._offsets.read(tp, message.offset)

    async def _start_heavy(
        self, tp: TopicPartition, message: ConsumerRecord[bytes, bytes], event: events.Event
    ) -> None:
        await self._heavy_slots.acquire()  # bounded: a flood of huge posts waits here
        self._offsets.hold(tp, message.offset)
        task = asyncio.create_task(self._process(message, event), name="heavy-fanout")
        self._heavy[task] = tp

        def finished(done: asyncio.Task[None]) -> None:
            self._heavy.pop(done, None)
            self._heavy_slots.release()
            if not done.cancelled():
                self._offsets.release(tp, message.offset)

        task.add_done_callback(finished)

    async def _process(self, message: ConsumerRecord[bytes, bytes], event: events.Event) -> None:
        attempt, delay = 0, 0.2
        while True:
            attempt += 1
            try:
                await self._handlers.handle(event)
                if isinstance(event, events.PostCreated):
                    # The moment the handler observes fanout_post_to_timeline_seconds.
                    self.post_to_timeline.add(
                        max(0.0, time.time() * 1000 - id_timestamp_ms(event.post_id))
                    )
                return
            except CONNECT_ERRORS as exc:
                # A dependency is down: that is not the event's fault, so wait it out.
                log.warning(
                    "%s at %s/%d@%d: dependency unavailable (%s); retrying",
                    event.TYPE,
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
            except Exception as exc:  # noqa: BLE001 - a poison event must not stop the partition
                if attempt >= MAX_ATTEMPTS:
                    await self._dead_letter(message, f"{type(exc).__name__}: {exc}", attempt)
                    return
                log.warning("%s failed (attempt %d): %r", event.TYPE, attempt, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _dead_letter(
        self, message: ConsumerRecord[bytes, bytes], reason: str, attempts: int
    ) -> None:
        headers = [
            ("reason", reason[:1000].encode()),
            ("source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
            ("attempts", str(attempts).encode()),
        ]
        await self._producer.send_and_wait(
            self._topics.dead_letters, message.value, key=message.key, headers=headers
        )
        self._metrics.dead_letters.labels(message.topic).inc()
        log.error(
            "dead-lettered %s/%d@%d after %d attempt(s): %s",
            message.topic,
            message.partition,
            message.offset,
            attempts,
            reason,
        )

    async def _report_lag(self) -> None:
        lag: dict[TopicPartition, int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            position = await self._consumer.position(tp)
            lag[tp] = max(0, highwater - position)
            self._metrics.lag.labels(tp.topic, str(tp.partition)).set(lag[tp])
        self.lag = lag

    def partitions(self) -> list[TopicPartition]:
        """The partitions this worker holds now."""
        return sorted(self._consumer.assignment())
