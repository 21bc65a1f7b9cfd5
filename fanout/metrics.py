"""Prometheus metrics of the fan-out worker."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class FanoutMetrics:
    events: Counter
    timeline_writes: Counter
    batches: Counter
    live_publishes: Counter
    push_jobs: Counter
    dead_letters: Counter
    unreplicated_batches: Counter
    post_to_timeline: Histogram
    lag: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FanoutMetrics:
        return cls(
            events=Counter(
                "fanout_events", "Events processed by type", ["type"], registry=registry
            ),
            timeline_writes=Counter(
                "fanout_timeline_writes", "Post ids added to timelines", registry=registry
            ),
            batches=Counter(
                "fanout_batches", "Follower batches written", ["tier"], registry=registry
            ),
            live_publishes=Counter(
                "fanout_live_publishes",
                "Events published live (user and author channels)",
                registry=registry,
            ),
            push_jobs=Counter(
                "fanout_push_jobs", "Push jobs produced by kind", ["kind"], registry=registry
            ),
            dead_letters=Counter(
                "fanout_dead_letters",
                "Events sent to the dead-letter topic",
                ["topic"],
                registry=registry,
            ),
            unreplicated_batches=Counter(
                "fanout_unreplicated_batches",
                "Batch writes to a cluster node no replica acknowledged in REDIS_REPLICA_WAIT_MS",
                registry=registry,
            ),
            post_to_timeline=Histogram(
                "fanout_post_to_timeline_seconds",
                "From post creation to the end of its fan-out",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            lag=Gauge(
                "fanout_consumer_lag",
                "Messages not yet consumed, per partition",
                ["topic", "partition"],
                registry=registry,
            ),
        )
