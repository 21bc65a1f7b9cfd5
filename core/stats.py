"""Per-node live stats for the ops dashboard: each service process writes one JSON
snapshot to `stats:<service>:<node>` every second with a short TTL, so a node that stops
reporting disappears (shown as down). Prometheus /metrics stays the long-term record;
this is the one-second view. Nothing here may block or fail the service it reports on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from core import keys

log = logging.getLogger(__name__)

STATS_TTL = 5  # seconds; the dashboard shows a node as down once its key expired
REPORT_EVERY = 1.0

Snapshot = Mapping[str, Any]


class LatencyWindow:
    """Recent latency samples (milliseconds) for p50/p99 over the last `seconds`.

    Bounded twice: by age and by count (a burst keeps only its newest `max_samples`), so
    memory is flat whatever the rate. Percentiles are computed on demand, once a second.
    """

    def __init__(self, seconds: float = 10.0, max_samples: int = 20_000) -> None:
        self._seconds = seconds
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, ms: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, ms))

    def percentiles(self, now: float | None = None) -> dict[str, float | None]:
        """`{"p50": .., "p99": .., "count": n}`; p50/p99 are None without samples."""
        horizon = (time.monotonic() if now is None else now) - self._seconds
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        values = sorted(ms for _, ms in self._samples)
        if not values:
            return {"p50": None, "p99": None, "count": 0}
        return {
            "p50": round(_rank(values, 0.50), 2),
            "p99": round(_rank(values, 0.99), 2),
            "count": len(values),
        }


def _rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def report_forever(
    client: aioredis.Redis,
    service: str,
    node: str,
    snapshot: Callable[[], Snapshot],
    every: float = REPORT_EVERY,
) -> None:
    """Write `snapshot()` (plus `node` and `reported_at_ms`) every `every` seconds until
    cancelled. Redis being down costs a warning per report, never the service."""
    key = keys.node_stats(service, node)
    while True:
        body = dict(snapshot())
        body["node"] = node
        body["reported_at_ms"] = int(time.time() * 1000)
        try:
            await client.set(key, orjson.dumps(body), ex=STATS_TTL)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("%s stats not reported: %s", service, exc)
        await asyncio.sleep(every)


async def read_all(client: aioredis.Redis, service: str) -> list[dict[str, Any]]:
    """Every live node's latest snapshot of one service (SCAN, never KEYS)."""
    found = [key async for key in client.scan_iter(match=keys.node_stats(service, "*"))]
    if not found:
        return []
    raw = await client.mget(found)
    return [orjson.loads(value) for value in raw if value is not None]
