"""The API server's one-second stats for the ops dashboard (`stats:server:<node>`): feed
read latency (p50/p99 of recent GET /v1/feed), timeline cache hits and misses, requests,
and the ranked feed: pages served ranked or by chronological fallback (with its cause),
and the ranker's latency (p50/p99 of recent first pages).

Totals are read from the Prometheus counters the server already keeps, so the dashboard
and /metrics can never disagree. Reporting must never slow down or fail a request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import Counter

from core import stats
from core.metric_totals import counter_by, counter_total
from core.resources import REDIS
from core.service import OPS
from core.supervision import SUPERVISOR
from server.feed.ranked import RANKED
from server.metrics import METRICS, ServerMetrics

CACHE_HIT_SOURCES = frozenset({"redis"})  # rebuild and postgres are misses


@dataclass(slots=True)
class ServerStats:
    feed_reads: stats.LatencyWindow = field(default_factory=stats.LatencyWindow)

    def snapshot(self, metrics: ServerMetrics, ranker: stats.LatencyWindow) -> dict[str, object]:
        """`ranker`: the ranked feed's window of ranking times (server/feed/ranked.py feeds it
        where it observes `feed_ranker_seconds`), the same mechanism as the feed reads'."""
        window = self.feed_reads.percentiles()
        by_source = counter_by(metrics.timeline_reads, "source")
        hits = sum(n for source, n in by_source.items() if source in CACHE_HIT_SOURCES)
        ranking = ranker.percentiles()
        ranked = _ranked_pages(metrics.ranked_pages)
        return {
            "feed_read_p50_ms": window["p50"],
            "feed_read_p99_ms": window["p99"],
            "feed_reads_recent": window["count"],
            "timeline_cache_hits_total": hits,
            "timeline_cache_misses_total": sum(by_source.values()) - hits,
            "feed_pages_general_total": counter_total(metrics.feed_pages_general),
            "requests_total": counter_total(metrics.requests),
            # A first page ranked now ("ok") and a later page read from its snapshot are
            # both ranked; every other cause is a chronological page served instead.
            "ranked_first_pages_total": ranked.pop(("ranked", "ok"), 0),
            "ranked_later_pages_total": ranked.pop(("ranked", "snapshot"), 0),
            "ranked_fallbacks": {
                cause: n
                for (algorithm, cause), n in sorted(ranked.items())
                if algorithm == "chronological"
            },
            "ranker_p50_ms": ranking["p50"],
            "ranker_p99_ms": ranking["p99"],
            "ranker_recent": ranking["count"],
        }


def _ranked_pages(counter: Counter) -> dict[tuple[str, str], int]:
    """`feed_ranked_requests` by (algorithm, cause): a label pair, which
    core.metric_totals.counter_by (one label) cannot group by."""
    out: dict[tuple[str, str], int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("algorithm", ""), sample.labels.get("cause", ""))
                out[key] = out.get(key, 0) + int(sample.value)
    return out


SERVER_STATS = web.AppKey("server_stats", ServerStats)


async def stats_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reports this node's snapshot every second while the app runs (started after
    server_ctx, which creates the ranked feed)."""
    server_stats = app[SERVER_STATS]
    metrics = app[METRICS]
    ranker = app[RANKED].latency
    reporter = stats.reporter(
        app[REDIS], "server", app[OPS].node, lambda: server_stats.snapshot(metrics, ranker)
    )
    async with app[SUPERVISOR].running(reporter):
        yield
