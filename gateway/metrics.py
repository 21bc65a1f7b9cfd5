"""Prometheus metrics of a gateway process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    connections: Gauge
    users: Gauge
    delivered: Counter
    slow_disconnects: Counter
    high_water: Gauge
    refused: Counter
    post_latency: Histogram
    pubsub_reconnects: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            connections=Gauge(
                "gateway_connections",
                "Open connections by transport",
                ["transport"],
                registry=registry,
            ),
            users=Gauge(
                "gateway_users", "Distinct users connected to this node", registry=registry
            ),
            delivered=Counter(
                "gateway_messages_delivered", "Events queued to connections", registry=registry
            ),
            slow_disconnects=Counter(
                "gateway_slow_disconnects",
                "Connections closed because they could not keep up",
                registry=registry,
            ),
            high_water=Gauge(
                "gateway_queue_high_water_bytes",
                "Largest outbound backlog of a current connection",
                registry=registry,
            ),
            refused=Counter(
                "gateway_refused", "Connections refused by reason", ["reason"], registry=registry
            ),
            post_latency=Histogram(
                "gateway_post_to_socket_seconds",
                "From a post's creation to its bytes handed to a client's socket (sampled)",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            pubsub_reconnects=Counter(
                "gateway_pubsub_reconnects",
                "Pub/sub links lost and re-established (local clients told to resume)",
                registry=registry,
            ),
        )
