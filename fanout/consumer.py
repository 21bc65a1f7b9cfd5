"""The fan-out consumer loop: Kafka in, handlers, offsets out.

Partitions are processed concurrently. Within a partition batch, PostCreated events of
small authors are delivered together first (Handlers.small_posts: creates of different
posts commute, and a delete later in the batch still comes after its create); the rest
go in order per key (one author's posts, one follower's follows) and different keys side
by side, at most LANES handlers at once. A delete of a post whose throttled-tier fan-out
is still running in the background stops that fan-out and waits for it first. Offsets
are committed only after every message before them is fully handled (at-least-once; the
handlers are idempotent). Infrastructure errors are retried until they pass; an event
that keeps failing for any other reason goes to the dead-letter topic with the reason
after MAX_ATTEMPTS, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from core import events
from core.clients import CONNECT_ERRORS
from core.ids import id_timestamp_ms
from core.offsets import OffsetTracker, commit, pin_new_partitions
from core.stats import LatencyWindow
from core.topics import Topics
from fanout.event_handlers import Handlers
from fanout.metrics import FanoutMetrics

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_BACKOFF = 5.0
# Between retries while a dependency is away: short, since the event flows again only at
# the next retry after it is back (a refused retry costs a Postgres read and a refusal
# from the Redis gate, no network wait).
DEPENDENCY_BACKOFF = 1.0
HEAVY_LANES = 2  # throttled-tier fan-outs running at once, beside the partition lanes
# Handlers running at once across all partitions (not per partition: 18 partitions x 16
# lanes could outgrow the Redis pool, whose limit fails calls instead of queueing them).
LANES = 64

Decoded: TypeAlias = tuple[ConsumerRecord[bytes, bytes], events.Event | events.EventDecodeError]


def _decoded(message: ConsumerRecord[bytes, bytes]) -> Decoded:
    try:
        return message, events.decode(message.value or b"")
    except events.EventDecodeError as exc:
        return message, exc


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
        self._heavy_posts: defaultdict[int, set[asyncio.Task[None]]] = defaultdict(set)
        self._lanes = asyncio.Semaphore(LANES)
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
                        async with asyncio.TaskGroup() as group:  # a failure stops them all
                            for messages in batches.values():
                                group.create_task(self._partition(messages))
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
        await commit(self._consumer, self._offsets, offsets)

    async def _partition(self, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Small authors' posts together first, then the rest in order per key, keys side
        by side: a partition carries many authors, and a small post spends most of its
        time waiting on round trips. The batch counts as read once all of it is done (or
        held by a background fan-out)."""
        decoded = [_decoded(message) for message in messages]
        done = await self._small_posts(decoded)
        chains: defaultdict[bytes | None, list[Decoded]] = defaultdict(list)
        for message, event in decoded:
            if message.offset not in done:
                chains[message.key].append((message, event))
        async with asyncio.TaskGroup() as group:
            for chain in chains.values():
                group.create_task(self._chain(chain))
        last = messages[-1]
        self._offsets.read(TopicPartition(last.topic, last.partition), last.offset)

    async def _small_posts(self, decoded: list[Decoded]) -> set[int]:
        """Offsets of the PostCreated events delivered together (Handlers.small_posts).
        The posts it did not take care of, or all of them if it fails, go the one-by-one
        path, which retries, dead-letters and is idempotent."""
        created = [(m, e) for m, e in decoded if isinstance(e, events.PostCreated)]
        if not created:
            return set()
        try:
            handled = await self._handlers.small_posts([e for _, e in created])
        except Exception as exc:  # noqa: BLE001 - the one-by-one path handles it properly
            log.warning("grouped delivery failed (%r); one by one instead", exc)
            return set()
        now_ms = time.time() * 1000
        for post_id in handled:
            self.post_to_timeline.add(max(0.0, now_ms - id_timestamp_ms(post_id)))
        return {m.offset for m, e in created if e.post_id in handled}

    async def _chain(self, chain: list[Decoded]) -> None:
        async with self._lanes:
            for message, event in chain:
                await self._one(message, event)

    async def _one(
        self, message: ConsumerRecord[bytes, bytes], event: events.Event | events.EventDecodeError
    ) -> None:
        if isinstance(event, events.EventDecodeError):
            await self._dead_letter(message, f"undecodable: {event}", 1)
        elif await self._handlers.is_heavy(event):
            await self._start_heavy(
                TopicPartition(message.topic, message.partition), message, event
            )
        else:
            if isinstance(event, events.PostDeleted):
                await self._heavy_done(event.post_id)
            await self._process(message, event)

    async def _heavy_done(self, post_id: int) -> None:
        """A delete must not overtake its create: a background fan-out of the post would
        go on writing it after the delete's sweep. Stop it after its batches in flight
        and wait for it (not for the rest of its followers)."""
        tasks = self._heavy_posts.get(post_id)
        if not tasks:
            return
        with self._handlers.withdrawing(post_id):
            await asyncio.wait(set(tasks))

    async def _start_heavy(
        self, tp: TopicPartition, message: ConsumerRecord[bytes, bytes], event: events.Event
    ) -> None:
        await self._heavy_slots.acquire()  # bounded: a flood of huge posts waits here
        self._offsets.hold(tp, message.offset)
        task = asyncio.create_task(self._process(message, event), name="heavy-fanout")
        self._heavy[task] = tp
        post_id = event.post_id if isinstance(event, events.PostCreated) else None
        if post_id is not None:
            self._heavy_posts[post_id].add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._heavy.pop(done, None)
            if post_id is not None:
                running = self._heavy_posts.pop(post_id, set())
                running.discard(done)
                if running:
                    self._heavy_posts[post_id] = running
            self._heavy_slots.release()
            if not done.cancelled():
                self._offsets.release(tp, message.offset)

        task.add_done_callback(finished)

    async def _process(self, message: ConsumerRecord[bytes, bytes], event: events.Event) -> None:
        attempt, delay = 0, 0.2
        while True:
            attempt += 1
            cap = MAX_BACKOFF
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
                cap = DEPENDENCY_BACKOFF
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
            delay = min(delay * 2, cap)

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
