"""Turns raw load results into percentiles and a markdown block ready to paste."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.bench.loadgen import Result

CPU_COLUMNS = ("server", "postgres", "redis", "loadgen", "other")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    offered: float
    achieved: float
    p50: float  # milliseconds, over every measured response
    p90: float
    p99: float
    p999: float
    max: float
    page2_p99: float
    errors: str
    lag_p99: float
    cpu: dict[str, float]  # group -> percent of one core over the window


def summarize(label: str, result: Result, cpu_seconds: dict[str, float]) -> Row:
    every = sorted(x for values in result.latencies.values() for x in values)
    page2 = sorted(result.latencies.get("page2", []))
    answered = len(every)
    span = max(result.duration, result.last_done)
    errors = {k: n for k, n in result.outcomes.items() if k != "200"}
    ms = 1000.0
    return Row(
        label=label,
        offered=result.offered_rate,
        achieved=(answered - sum(n for k, n in errors.items() if k.isdigit())) / span,
        p50=percentile(every, 50) * ms,
        p90=percentile(every, 90) * ms,
        p99=percentile(every, 99) * ms,
        p999=percentile(every, 99.9) * ms,
        max=(every[-1] if every else math.nan) * ms,
        page2_p99=percentile(page2, 99) * ms,
        errors=", ".join(f"{k}: {n}" for k, n in sorted(errors.items())) or "0",
        lag_p99=percentile(sorted(result.lag), 99) * ms,
        cpu={g: 100.0 * cpu_seconds.get(g, 0.0) / result.duration for g in CPU_COLUMNS},
    )


def table(rows: list[Row]) -> str:
    head = (
        "| load | offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| page-2 p99 ms | errors | dispatch lag p99 ms | CPU % server / pg / redis / client "
        "/ other |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--|--:|--|\n"
    )
    lines = [
        f"| {r.label} | {r.offered:,.0f} | {r.achieved:,.0f} | {r.p50:.1f} | {r.p90:.1f} "
        f"| {r.p99:.1f} | {r.p999:.1f} | {r.max:.1f} | {_num(r.page2_p99)} | {r.errors} "
        f"| {r.lag_p99:.1f} | {' / '.join(f'{r.cpu[g]:.0f}' for g in CPU_COLUMNS)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def revision(root: Path) -> str:
    """The server code measured: commit, and whether the tree had local changes."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return out.stdout.strip()
