"""Totals read back from a service's own Prometheus counters, for the one-second stats
snapshots (core/stats.py): the dashboard and /metrics then cannot disagree."""

from __future__ import annotations

from prometheus_client import Counter


def counter_total(counter: Counter, **labels: str) -> int:
    """Sum of a counter's samples: every label set, or only those matching `labels`."""
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return int(total)


def counter_by(counter: Counter, label: str) -> dict[str, int]:
    """A counter's totals grouped by the values of one label."""
    out: dict[str, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0) + int(sample.value)
    return out
