"""Prometheus metrics of the API server (exposed by core.service at /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Label values from requests are bounded: any other method is "other", and routes are
# templates (an id in a path would make a series per id).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
Series = tuple[Counter, Histogram]  # the labelled children


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    requests: Counter
    latency: Histogram
    timeline_reads: Counter
    feed_pages_general: Counter
    outbox_published: Counter
    ranked_pages: Counter
    ranker_seconds: Histogram
    _series: dict[tuple[str, str, int], Series] = field(default_factory=dict)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request: counted by method, route and status, timed by method and route.
        The labelled children are kept, since looking them up costs more than using
        them."""
        key = (method if method in METHODS else "other", route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(key[0], route, str(status)),
                self.latency.labels(key[0], route),
            )
        series[0].inc()
        series[1].observe(seconds)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ServerMetrics:
        return cls(
            requests=Counter(
                "feed_http_requests",
                "HTTP requests by route and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "feed_http_request_seconds",
                "HTTP request latency by route",
                ["method", "route"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            timeline_reads=Counter(
                "feed_timeline_reads",
                "Home timeline reads by source: redis (cache hit), rebuild (cache miss, "
                "rebuilt from Postgres) or postgres (Redis unavailable)",
                ["source"],
                registry=registry,
            ),
            feed_pages_general=Counter(
                "feed_pages_general",
                "Feed pages the one-call Redis script handed to the general path: a cache "
                "to fill, history past what the caches hold, or a second round of merging",
                registry=registry,
            ),
            outbox_published=Counter(
                "feed_outbox_published", "Outbox events published to Kafka", registry=registry
            ),
            ranked_pages=Counter(
                "feed_ranked_requests",
                "Feed pages asked for with algorithm=ranked, by the algorithm that served "
                "them and why: ranked (ok, snapshot: a later page), or chronological "
                "(no_model, error, budget, breaker_open, no_candidates)",
                ["algorithm", "cause"],
                registry=registry,
            ),
            ranker_seconds=Histogram(
                "feed_ranker_seconds",
                "Time to rank a first ranked page (candidates, features, scoring), "
                "including attempts that ran over the budget or failed",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )


METRICS = web.AppKey("server_metrics", ServerMetrics)
