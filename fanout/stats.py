"""The fan-out worker's one-second stats for the ops dashboard (`stats:fanout:<node>`):
consumer lag, timeline writes, batches, posts, dead letters, post-to-timeline latency.

Totals are read from the Prometheus metrics the worker already keeps (the dashboard and
/metrics cannot disagree); lag and latency come from the consumer. Read-only: building
a snapshot never touches Kafka or Redis.
"""

from __future__ import annotations

from collections.abc import Callable

from core import events
from core.metric_totals import counter_total
from core.stats import Snapshot
from fanout.consumer import FanoutConsumer
from fanout.metrics import FanoutMetrics


def snapshotter(consumer: FanoutConsumer, metrics: FanoutMetrics) -> Callable[[], Snapshot]:
    def snapshot() -> Snapshot:
        latency = consumer.post_to_timeline.percentiles()
        lag = {f"{tp.topic}/{tp.partition}": n for tp, n in sorted(consumer.lag.items())}
        return {
            "lag_total": sum(lag.values()),
            "lag": lag,
            "partitions": [f"{tp.topic}/{tp.partition}" for tp in consumer.partitions()],
            "timeline_writes_total": counter_total(metrics.timeline_writes),
            "batches_total": counter_total(metrics.batches),
            "posts_total": counter_total(metrics.events, type=events.PostCreated.TYPE),
            "events_total": counter_total(metrics.events),
            "live_publishes_total": counter_total(metrics.live_publishes),
            "push_jobs_total": counter_total(metrics.push_jobs),
            "dead_letters_total": counter_total(metrics.dead_letters),
            "post_to_timeline_p50_ms": latency["p50"],
            "post_to_timeline_p99_ms": latency["p99"],
        }

    return snapshot
