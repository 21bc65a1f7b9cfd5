"""Prometheus metrics of a gateway process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    connections: Gauge
    users: Gauge
    delivered: Counter
    slow_disconnects: Counter
    high_water: Gauge
    refused: Counter

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
        )
