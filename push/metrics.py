"""Prometheus metrics of the push worker, and the counts its ops stats report."""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class PushMetrics:
    outcomes: Counter
    send_seconds: Histogram
    jobs: Counter
    disabled: Counter
    in_flight: Gauge
    # The same counts for the one-second ops stats (Prometheus counters are not meant
    # to be read back).
    outcome_tally: Tally[str] = field(default_factory=Tally)
    skipped_tally: Tally[str] = field(default_factory=Tally)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PushMetrics:
        return cls(
            outcomes=Counter(
                "push_outcomes",
                "Send attempts by provider, result (sent, invalid, retry, failed) and reason",
                ["provider", "result", "reason"],
                registry=registry,
            ),
            send_seconds=Histogram(
                "push_send_seconds",
                "Duration of one send to APNs, FCM or a Web Push service",
                ["provider"],
                buckets=SEND_BUCKETS,
                registry=registry,
            ),
            jobs=Counter(
                "push_jobs",
                "Push jobs by kind and decision (sent, online, coalesced, duplicate, "
                "expired, no_device)",
                ["kind", "decision"],
                registry=registry,
            ),
            disabled=Counter(
                "push_devices_disabled",
                "Devices disabled because their push service said they are gone",
                ["provider"],
                registry=registry,
            ),
            in_flight=Gauge("push_jobs_in_flight", "Jobs being handled", registry=registry),
        )

    def outcome(self, provider: str, result: str, reason: str) -> None:
        self.outcomes.labels(provider, result, reason).inc()
        self.outcome_tally[f"{provider}:{result}:{reason}"] += 1

    def job(self, kind: str, decision: str) -> None:
        self.jobs.labels(kind, decision).inc()
        if decision != "sent":
            self.skipped_tally[decision] += 1
