"""Per-node live stats for the ops dashboard: each service process writes one JSON
snapshot to `stats:<service>:<node>` every second with a short TTL, so a node that stops
reporting disappears (shown as down), and notes the time in the service's index
(`stats-nodes:<service>`), where readers find the nodes. Prometheus /metrics stays the
long-term record; this is the one-second view. Nothing here may block or fail the service
it reports on."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import orjson
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from core import keys
from core.clients import REDIS_DOWN, AnyRedis, mget_any
from core.keys import CLUSTER_SLOTS
from core.supervision import Child

log = logging.getLogger(__name__)

STATS_TTL = 5  # seconds; the dashboard shows a node as down once its key expired
REPORT_EVERY = 1.0
# An index outlives its last node by this much, so a service gone for good leaves nothing.
INDEX_TTL = 3600
MAX_NODES = 1000  # per service: a bound on one answer, far above any real deployment

Snapshot = Mapping[str, Any]


class LatencyWindow:
    """Recent latency samples (milliseconds) for p50/p99 over the last `seconds`.

    Samples are counted in log-spaced buckets (each ~5% wide) per second, so adding one
    is O(1), memory is flat whatever the rate, and a percentile reads ~300 counters per
    second kept: sorting the raw samples of a busy node (10 000+ in a window) stalled
    its event loop for milliseconds every second. A percentile is its bucket's upper
    bound: at most ~5% above the true value, never below it.
    """

    def __init__(self, seconds: float = 10.0) -> None:
        self._seconds = max(1, math.ceil(seconds))
        self._slots: deque[tuple[int, list[int]]] = deque()  # (second, counts), oldest first

    def add(self, ms: float, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if not self._slots or self._slots[-1][0] != second:
            self._slots.append((second, [0] * _BUCKETS))
            if len(self._slots) > self._seconds + 1:
                self._slots.popleft()
        self._slots[-1][1][_bucket(ms)] += 1

    def percentiles(self, now: float | None = None) -> dict[str, float | None]:
        """`{"p50": .., "p99": .., "count": n}`; p50/p99 are None without samples."""
        horizon = (time.monotonic() if now is None else now) - self._seconds
        while self._slots and self._slots[0][0] + 1 <= horizon:
            self._slots.popleft()
        totals = [sum(c) for c in zip(*(counts for _, counts in self._slots), strict=True)]
        count = sum(totals)
        if not count:
            return {"p50": None, "p99": None, "count": 0}
        return {
            "p50": round(_rank(totals, count, 0.50), 2),
            "p99": round(_rank(totals, count, 0.99), 2),
            "count": count,
        }


_GROWTH = 1.05
_SMALLEST_MS = 0.01  # bucket 0 holds everything up to this
_BUCKETS = 2 + math.ceil(math.log(10_000_000 / _SMALLEST_MS, _GROWTH))  # up to ~3 hours


def _bucket(ms: float) -> int:
    if ms <= _SMALLEST_MS:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log(ms / _SMALLEST_MS, _GROWTH)))


def _rank(totals: list[int], count: int, q: float) -> float:
    """The upper bound of the bucket holding the sample of rank q."""
    wanted = min(count - 1, int(q * count))
    seen = 0
    for index, n in enumerate(totals):
        seen += n
        if seen > wanted:
            return _SMALLEST_MS * _GROWTH**index
    return _SMALLEST_MS * _GROWTH ** (len(totals) - 1)


def reporter(
    client: AnyRedis,
    service: str,
    node: str,
    snapshot: Callable[[], Snapshot],
) -> Child:
    """`report_forever` as a service's supervised task. Not critical: a node whose
    reporter is down is missing from the dashboard (and says so on /readyz) but serves
    as well as before; failing readiness for it would turn a Redis error that every
    node's reporter meets at once (out of memory, a read-only replica) into an outage."""
    return Child("stats", lambda: report_forever(client, service, node, snapshot), critical=False)


async def report_forever(
    client: AnyRedis,
    service: str,
    node: str,
    snapshot: Callable[[], Snapshot],
    every: float = REPORT_EVERY,
) -> None:
    """Write `snapshot()` (plus `node` and `reported_at_ms`) every `every` seconds until
    cancelled. Redis being down costs a warning per report, never the service."""
    key, index = keys.node_stats(service, node), keys.node_stats_index(service)
    while True:
        body = dict(snapshot())
        body["node"] = node
        body["reported_at_ms"] = now = int(time.time() * 1000)
        # One round trip (on a cluster, the pipeline sends each key to its node).
        pipe = client.pipeline(transaction=False)
        pipe.set(key, orjson.dumps(body), ex=STATS_TTL)
        pipe.zadd(index, {node: now})
        pipe.expire(index, INDEX_TTL)
        try:
            await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("%s stats not reported: %s", service, exc)
        await asyncio.sleep(every)


async def live_snapshots(client: AnyRedis, service: str) -> list[tuple[str, bytes]]:
    """(node, raw snapshot) of every node of a service that reported within STATS_TTL,
    from the service's index: a few keys read, whatever else Redis holds. (A SCAN for
    `stats:<service>:*` walked every key, timelines included: with millions of users,
    thousands of round trips per dashboard refresh.) Nodes silent for longer leave the
    index here."""
    index = keys.node_stats_index(service)
    since = int(time.time() * 1000) - STATS_TTL * 1000
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", f"({since}")
    pipe.zrange(index, 0, MAX_NODES - 1)
    _, entries = await pipe.execute()
    nodes = [entry.decode() for entry in cast(list[bytes], entries)]
    if not nodes:
        return []
    # The nodes' keys hash to several slots: on a cluster, one MGET per slot.
    names = [keys.node_stats(service, n) for n in nodes]
    raw = cast(list[bytes | None], await mget_any(client, names))
    # A node whose key expired since its last report is down: left out.
    return [(node, value) for node, value in zip(nodes, raw, strict=True) if value is not None]


async def redis_nodes(client: AnyRedis) -> dict[str, Any]:
    """The Redis a service talks to, for the dashboard: every master of a cluster with the
    hash slots it serves and its key count (`up` false when it does not answer), or the
    one Redis. Asks each node once, side by side."""
    if not isinstance(client, RedisCluster):
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return {
            "cluster": False,
            "nodes": [await _node_state(client.dbsize(), where, CLUSTER_SLOTS)],
        }
    slots: Counter[str] = Counter(
        nodes[0].name for nodes in client.nodes_manager.slots_cache.values() if nodes
    )
    masters = sorted(client.get_primaries(), key=lambda n: n.name)
    states = await asyncio.gather(
        *(
            _node_state(client.execute_command("DBSIZE", target_nodes=n), n.name, slots[n.name])
            for n in masters
        )
    )
    return {"cluster": True, "nodes": list(states)}


async def _node_state(size: Awaitable[Any], node: str, slots: int) -> dict[str, Any]:
    try:
        keys_held: int | None = int(await size)
    except (redis.exceptions.RedisError, OSError):
        keys_held = None
    return {"node": node, "slots": slots, "keys": keys_held, "up": keys_held is not None}


async def read_all(client: AnyRedis, service: str) -> list[dict[str, Any]]:
    """Every live node's latest snapshot of one service."""
    return [orjson.loads(raw) for _, raw in await live_snapshots(client, service)]
