"""core.stats.LatencyWindow: the dashboard's p50/p99 over the last seconds."""

import random

from core.stats import LatencyWindow


def test_percentiles_are_within_a_bucket_above_the_true_value() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(0, 1.5) for _ in range(20_000)]
    window = LatencyWindow(seconds=10)
    for i, ms in enumerate(samples):
        window.add(ms, now=1000.0 + i / 4000)  # five seconds of samples
    found = window.percentiles(now=1005.0)
    ordered = sorted(samples)
    assert found["count"] == len(samples)
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        true = ordered[int(q * len(ordered))]
        value = found[name]
        assert value is not None and true * 0.999 <= value <= true * 1.06, (name, true, value)


def test_old_samples_leave_the_window() -> None:
    window = LatencyWindow(seconds=10)
    for _ in range(5):
        window.add(500.0, now=100.2)
    for i in range(100):
        window.add(2.0, now=105.0 + i / 100)
    assert window.percentiles(now=106.0)["p99"] == reported(500.0)
    assert window.percentiles(now=111.0)["p99"] == reported(2.0)
    assert window.percentiles(now=200.0) == {"p50": None, "p99": None, "count": 0}


def test_extreme_values_are_kept_in_range() -> None:
    window = LatencyWindow()
    for ms in (0.0, -1.0, 1e-9, 1e12):
        window.add(ms, now=10.0)
    found = window.percentiles(now=10.0)
    assert found["count"] == 4
    assert found["p50"] is not None and found["p50"] <= 0.01


def reported(ms: float) -> float:
    """What the window reports for samples of `ms`: its bucket's upper bound."""
    window = LatencyWindow()
    window.add(ms, now=0.0)
    value = window.percentiles(now=0.0)["p99"]
    assert value is not None and ms <= value <= ms * 1.06
    return value
