"""Post-to-socket latency: from a post's creation (the time in its id) to the moment its
bytes are handed to a client's socket, for the ops dashboard (p50/p99 over the last 10 s,
core.stats.LatencyWindow) and /metrics (a histogram).

Sampled, so it costs the same at any rate: about `per_second` samples a second, taken
from every n-th socket write (n follows the write rate of the previous quarter second,
so a burst is sampled evenly, not just its first writes) and capped per quarter second."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Histogram

from core.stats import LatencyWindow
from gateway.outgoing import Outgoing

SAMPLES_PER_SECOND = 1000
SLOT_SECONDS = 0.25
WINDOW_SECONDS = 10.0


class DeliveryLatency:
    def __init__(self, histogram: Histogram, per_second: int = SAMPLES_PER_SECOND) -> None:
        self.window = LatencyWindow(seconds=WINDOW_SECONDS)
        self._histogram = histogram
        self._per_slot = max(1, int(per_second * SLOT_SECONDS))
        self._budget = self._per_slot
        self._stride = 1
        self._countdown = 0  # writes until the next sample
        self._writes = 0  # writes in the current slot
        self._slot_start = 0.0
        self._slot_end = 0.0

    def written(self, batch: Sequence[Outgoing]) -> None:
        """Called once per socket write with what it carried."""
        self._writes += 1
        self._countdown -= 1
        if self._countdown > 0:
            return
        now = time.monotonic()
        if now >= self._slot_end:
            per_slot_seen = self._writes * SLOT_SECONDS / max(now - self._slot_start, SLOT_SECONDS)
            self._stride = max(1, int(per_slot_seen / self._per_slot))
            self._writes, self._budget = 0, self._per_slot
            self._slot_start, self._slot_end = now, now + SLOT_SECONDS
        self._countdown = self._stride
        if self._budget <= 0:
            return
        wall_ms = time.time() * 1000
        for message in batch:
            if message.created_ms is not None:
                ms = max(0.0, wall_ms - message.created_ms)
                self.window.add(ms, now)
                self._histogram.observe(ms / 1000)
                self._budget -= 1

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p99) in milliseconds over the last 10 s; None without samples."""
        found = self.window.percentiles()
        return found["p50"], found["p99"]
