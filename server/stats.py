"""The API server's one-second stats for the ops dashboard (`stats:server:<node>`): feed
read latency (p50/p99 of recent GET /v1/feed), timeline cache hits and misses, requests.

Totals are read from the Prometheus counters the server already keeps, so the dashboard
and /metrics can never disagree. Reporting must never slow down or fail a request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from core import stats
from core.metric_totals import counter_by, counter_total
from core.resources import REDIS
from core.service import OPS
from core.supervision import SUPERVISOR
from server.metrics import METRICS, ServerMetrics

CACHE_HIT_SOURCES = frozenset({"redis"})  # rebuild and postgres are misses


@dataclass(slots=True)
class ServerStats:
    feed_reads: stats.LatencyWindow = field(default_factory=stats.LatencyWindow)

    def snapshot(self, metrics: ServerMetrics) -> dict[str, object]:
        window = self.feed_reads.percentiles()
        by_source = counter_by(metrics.timeline_reads, "source")
        hits = sum(n for source, n in by_source.items() if source in CACHE_HIT_SOURCES)
        return {
            "feed_read_p50_ms": window["p50"],
            "feed_read_p99_ms": window["p99"],
            "feed_reads_recent": window["count"],
            "timeline_cache_hits_total": hits,
            "timeline_cache_misses_total": sum(by_source.values()) - hits,
            "feed_pages_general_total": counter_total(metrics.feed_pages_general),
            "requests_total": counter_total(metrics.requests),
        }


SERVER_STATS = web.AppKey("server_stats", ServerStats)


async def stats_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reports this node's snapshot every second while the app runs."""
    server_stats = app[SERVER_STATS]
    metrics = app[METRICS]
    reporter = stats.reporter(
        app[REDIS], "server", app[OPS].node, lambda: server_stats.snapshot(metrics)
    )
    async with app[SUPERVISOR].running(reporter):
        yield
