"""Prometheus metrics of the API server (exposed by core.service at /metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.errors import Handler

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    requests: Counter
    latency: Histogram
    timeline_reads: Counter
    outbox_published: Counter

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
            outbox_published=Counter(
                "feed_outbox_published", "Outbox events published to Kafka", registry=registry
            ),
        )


METRICS = web.AppKey("server_metrics", ServerMetrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # The route template, never the raw path: ids in paths would explode cardinality.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)
