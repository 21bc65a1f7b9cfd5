"""The push consumer loop: jobs from the `push` topic handled concurrently (up to
PUSH_CONCURRENCY in flight, so one slow push service or a long Retry-After does not hold
up everyone else's pushes), offsets committed only up to the oldest unfinished job.

A job that cannot be decoded is logged and skipped: a push is a best-effort hint (the
feed and notifications are the record), never worth stopping the partition for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from core import events
from core.clients import CONNECT_ERRORS
from core.offsets import OffsetTracker, commit, pin_new_partitions
from push.dispatcher import Dispatcher
from push.metrics import PushMetrics

log = logging.getLogger(__name__)

HAND_OVER_WAIT = 5.0  # seconds in-flight jobs of revoked partitions get to finish
DEPENDENCY_RETRY = 1.0


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: PushConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.give_up(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{t.topic}/{t.partition}" for t in assigned))


class PushConsumer:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        dispatcher: Dispatcher,
        metrics: PushMetrics,
        concurrency: int,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        self._offsets = OffsetTracker()
        self._pinned: set[TopicPartition] = set()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self.assigned = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        self._consumer.subscribe([self._topic], listener=_HandOver(self))
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
                await pin_new_partitions(self._consumer, self._pinned, batches, self._commit)
                if self._consumer.assignment():
                    self.assigned.set()
                for messages in batches.values():
                    for message in messages:
                        await self._start(message)
                await self._commit(self._offsets.to_commit())
        finally:
            await self.drain(set(self._tasks.values()), 0)

    async def _start(self, message: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(message.topic, message.partition)
        try:
            job = events.decode(message.value or b"")
        except events.EventDecodeError as exc:
            log.warning(
                "push job %s/%d@%d skipped: %s", tp.topic, tp.partition, message.offset, exc
            )
            self._offsets.read(tp, message.offset)
            return
        if not isinstance(job, events.PushJob):
            log.error("not a push job at %s/%d@%d: %s", tp.topic, tp.partition, message.offset, job)
            self._offsets.read(tp, message.offset)
            return
        await self._slots.acquire()  # bounded: at most `concurrency` jobs in flight
        self._offsets.hold(tp, message.offset)
        self._offsets.read(tp, message.offset)
        task = asyncio.create_task(self._handle(job), name="push-job")
        self._tasks[task] = tp
        self._metrics.in_flight.set(len(self._tasks))

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.pop(done, None)
            self._slots.release()
            self._metrics.in_flight.set(len(self._tasks))
            if not done.cancelled():
                self._offsets.release(tp, message.offset)

        task.add_done_callback(finished)

    async def _handle(self, job: events.PushJob) -> None:
        while True:
            try:
                await self._dispatcher.handle(job)
                return
            except CONNECT_ERRORS as exc:
                # Redis or Postgres is down: not the job's fault, wait it out.
                log.warning("push job for user %d waits: %s", job.user_id, exc)
                await asyncio.sleep(DEPENDENCY_RETRY)
            except Exception:
                # A bug must cost this one push, not the consumer.
                log.exception("push job for user %d failed", job.user_id)
                return

    async def give_up(self, revoked: set[TopicPartition]) -> None:
        await self.drain(revoked, HAND_OVER_WAIT)
        await self._commit({tp: o for tp, o in self._offsets.to_commit().items() if tp in revoked})
        self._offsets.forget(revoked)
        self._pinned.difference_update(revoked)
        log.info("partitions revoked: %s", sorted(f"{t.topic}/{t.partition}" for t in revoked))

    async def drain(self, partitions: set[TopicPartition], wait: float) -> None:
        """Let the jobs of `partitions` finish for up to `wait` seconds, then cancel the
        rest (they are redelivered: their offsets were never committed)."""
        tasks = [task for task, tp in self._tasks.items() if tp in partitions]
        if not tasks:
            return
        if wait > 0:
            await asyncio.wait(tasks, timeout=wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        await commit(self._consumer, self._offsets, offsets)
