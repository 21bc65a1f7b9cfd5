"""The benchmark's publisher process: PUBLISHes live post events to users' channels
(u:<id>) the way fan-out does, each stamped with its send time and phase.

Python never builds one command per message: a Lua script publishes a whole batch
(channel and payload assembled inside Redis), so the publisher costs a few microseconds
per batch and the ceiling is Redis itself. Two modes:
- open loop: paced at a fixed rate, each batch stamped with its *intended* send time,
  so a stall anywhere (publisher included) shows up as latency, not as a lower rate;
- closed loop: as fast as the receivers keep up, at most `window` deliveries in flight
  (published but not yet received), which saturates the gateway without letting the
  queues grow until slow-consumer limits close connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from core import events, keys

# ARGV: head, mid, tail, first seq, count, user base, users, channel prefix, suffix.
# Message s goes to <prefix><base + s % users><suffix> as head..s..mid..s..tail.
PUBLISH_BATCH = """
local head, mid, tail = ARGV[1], ARGV[2], ARGV[3]
local seq, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local base, users, prefix, suffix = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], ARGV[9]
for s = seq, seq + n - 1 do
  local id = string.format('%d', s)
  redis.call('PUBLISH', prefix .. string.format('%d', base + s % users) .. suffix,
             head .. id .. mid .. id .. tail)
end
return n
"""
MAX_BATCH = 2000  # messages per script call: keeps each call (Redis blocked) ~1-2 ms
STALL_SECONDS = 10.0
TICK = 0.002  # open loop: one script call per tick, not one per message (publisher CPU)


@dataclass(frozen=True, slots=True)
class PublishPlan:
    redis_url: str
    user_base: int
    users: int  # channels u:<user_base> .. u:<user_base + users - 1>, round robin
    fanout: int  # connections one PUBLISH reaches (a user's connections)
    text_chars: int  # size of the post text: the payload is shaped like a real post


@dataclass(frozen=True, slots=True)
class Template:
    """A real post event (core.events.live_post) cut around its id and stamp."""

    head: bytes
    mid: bytes
    tail_before_t: bytes
    tail_before_p: bytes
    tail_end: bytes

    @classmethod
    def build(cls, text_chars: int) -> Template:
        post: dict[str, object] = {
            "id": "@ID@",
            "author": {"id": "9000000000", "handle": "bench", "display_name": "Bench"},
            "text": "x" * text_chars,
            "created_at": "2025-01-01T00:00:00.000Z",
            "reply_to": None,
            "repost_of": None,
            "media_ids": [],
            "counts": {"likes": 0, "reposts": 0, "replies": 0},
            "t": "@T@",
            "p": "@P@",
        }
        raw = events.live_post(post)
        head, mid, rest = raw.split(b"@ID@")
        before_t, rest = rest.split(b'"@T@"')
        before_p, end = rest.split(b'"@P@"')
        return cls(head, mid, before_t, before_p, end)

    def tail(self, t_ns: int, phase: int) -> bytes:
        return b"%s%d%s%d%s" % (self.tail_before_t, t_ns, self.tail_before_p, phase, self.tail_end)

    def size(self) -> int:
        return len(self.head + b"1" + self.mid + b"1" + self.tail(time.time_ns(), 1))


def channel_affixes() -> tuple[str, str]:
    """What a user channel holds before and after the user id (core/keys.py)."""
    prefix, found, suffix = keys.user_channel(987654321).partition("987654321")
    assert found, "user_channel no longer holds the user id"
    return prefix, suffix


class Publisher:
    def __init__(self, plan: PublishPlan, received: Callable[[], int]) -> None:
        self.plan = plan
        self._received = received
        self._client = redis.Redis.from_url(plan.redis_url)
        self._script = self._client.register_script(PUBLISH_BATCH)
        self._template = Template.build(plan.text_chars)
        self._affixes = channel_affixes()
        self.seq = 0

    def close(self) -> None:
        self._client.close()

    def _publish(self, count: int, t_ns: int, phase: int) -> None:
        self._script(
            args=[
                self._template.head,
                self._template.mid,
                self._template.tail(t_ns, phase),
                self.seq,
                count,
                self.plan.user_base,
                self.plan.users,
                *self._affixes,
            ]
        )
        self.seq += count

    def open_loop(
        self, deliveries_per_s: float, seconds: float, phase: int, limit: int = 0
    ) -> dict[str, Any]:
        """Every TICK, publishes what became due. Each batch is stamped with the intended
        time of its first message, so up to TICK of the measured latency is this
        batching (fan-out batches its PUBLISHes too) and any stall counts in full."""
        rate = deliveries_per_s / self.plan.fanout  # publishes per second
        start_ns, t0 = time.time_ns(), time.monotonic()
        sent, worst_backlog, tick = 0, 0, 0
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(elapsed * rate) + 1  # message k is due at k / rate
            if limit:
                due = min(due, limit)
                if sent >= limit:
                    break
            if due > sent:
                worst_backlog = max(worst_backlog, due - sent)
                while sent < due:
                    count = min(due - sent, MAX_BATCH)
                    self._publish(count, start_ns + int(sent / rate * 1e9), phase)
                    sent += count
            tick += 1
            time.sleep(max(0.0, tick * TICK - (time.monotonic() - t0)))
        return self._result(sent, time.monotonic() - t0, worst_backlog / rate)

    def closed_loop(self, window: int, seconds: float, phase: int) -> dict[str, Any]:
        base = self._received()
        batch = max(1, min(MAX_BATCH, window // (4 * self.plan.fanout)))
        t0 = last_progress = time.monotonic()
        sent, last_received = 0, 0
        while time.monotonic() - t0 < seconds:
            received = self._received() - base
            if received != last_received:
                last_received, last_progress = received, time.monotonic()
            elif time.monotonic() - last_progress > STALL_SECONDS:
                break  # deliveries lost (a connection closed?): report, do not hang
            if sent * self.plan.fanout - received + batch * self.plan.fanout > window:
                time.sleep(0.001)  # polling costs CPU the measured processes need
                continue
            self._publish(batch, time.time_ns(), phase)
            sent += batch
        return self._result(sent, time.monotonic() - t0, 0.0)

    def _result(self, sent: int, seconds: float, worst_lag: float) -> dict[str, Any]:
        return {
            "published": sent,
            "deliveries": sent * self.plan.fanout,
            "seconds": seconds,
            "publish_rate": sent / seconds,
            "worst_lag_s": worst_lag,
            "payload_bytes": self._template.size(),
        }


def publisher_main(
    plan: PublishPlan, counters: Any, row_width: int, slot: int, control: Connection
) -> None:
    """Entry point of the publisher process (multiprocessing, spawn). Commands:
    ("open", deliveries_per_s, seconds, phase[, limit]), ("closed", window, seconds, phase),
    ("stop",). `counters[row * row_width + slot]` are the receivers' message counts."""

    def received() -> int:
        return sum(counters[i] for i in range(slot, len(counters), row_width))

    publisher = Publisher(plan, received)
    try:
        while True:
            command = control.recv()
            if command[0] == "open":
                control.send(publisher.open_loop(*command[1:]))
            elif command[0] == "closed":
                control.send(publisher.closed_loop(*command[1:]))
            else:
                break
    finally:
        publisher.close()
