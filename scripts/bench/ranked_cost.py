"""The ranked feed's cost beside the chronological one, for feed_read.py (issue 26:
a ranked page should cost at most 3x a chronological page's server CPU).

feed_read runs each rate once per algorithm against the same server, readers and load;
this module only shapes those runs (path, first pages only, the server's time budget),
reads how the server actually served the ranked ones (its /metrics), and compares.
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.request
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from scripts.bench import cpu
from scripts.bench.loadgen import Plan
from scripts.bench.report import Row

ALGORITHMS = ("chronological", "ranked")
RANKED_METRIC = "feed_ranked_requests"
Served = dict[tuple[str, str], float]  # (algorithm, cause) -> pages


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--algorithm",
        choices=(*ALGORITHMS, "both"),
        default="chronological",
        help="feed algorithm asked for; both: each rate chronological, then ranked, and "
        "their server CPU per page and latency compared (first pages only)",
    )
    p.add_argument(
        "--ranking-budget-ms",
        type=int,
        default=10_000,
        help="the server's RANKING_BUDGET_MS: far above a ranked page's cost here, so "
        "every first page is ranked in full instead of falling back when the machine is "
        "busy (production: 50); a ranked run with any fallback is invalid and repeated",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=20.0,
        help="with --algorithm both: how long the idle server's own CPU (stats reports, "
        "outbox polling) is measured first, to be taken off each run's before dividing "
        "by pages: at the low rates a ranked page allows here it would swamp a "
        "chronological page's cost",
    )


def algorithms(args: argparse.Namespace) -> tuple[str, ...]:
    return ALGORITHMS if args.algorithm == "both" else (str(args.algorithm),)


def server_env(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("RANKING_BUDGET_MS", str(args.ranking_budget_ms)),)


def plan_for(args: argparse.Namespace, plan: Plan, algorithm: str) -> Plan:
    """First pages only whenever ranked pages run: a later ranked page reads the first
    page's snapshot, a different (cheap) case, and chronological must compare like for
    like."""
    if args.algorithm == "chronological":
        return plan
    path = plan.path + ("&algorithm=ranked" if algorithm == "ranked" else "")
    return replace(plan, path=path, second_page_share=0.0)


def label(base: str, algorithm: str) -> str:
    return f"{base}, ranked first pages" if algorithm == "ranked" else base


def served(base_url: str) -> Served:
    """The server's `feed_ranked_requests` counters, from its /metrics."""
    # A generous bound: right after an overloaded run the server still works off its queue.
    with urllib.request.urlopen(base_url + "/metrics", timeout=60) as resp:  # noqa: S310 - our own loopback server
        text = resp.read().decode()
    out: Served = {}
    for family in text_string_to_metric_families(text):
        if family.name != RANKED_METRIC:
            continue
        for sample in family.samples:
            if sample.name == RANKED_METRIC + "_total":
                key = (sample.labels["algorithm"], sample.labels["cause"])
                out[key] = sample.value
    return out


def since(before: Served, after: Served) -> Served:
    return {k: n - before.get(k, 0.0) for k, n in after.items() if n - before.get(k, 0.0)}


def describe(counts: Served) -> str:
    """How the ranked requests of a run (warm-up included) were served."""
    ranked = sum(n for (algorithm, _), n in counts.items() if algorithm == "ranked")
    fallbacks = {c: n for (a, c), n in counts.items() if a != "ranked"}
    text = f"ranked pages {ranked:,.0f}"
    if fallbacks:
        text += " (fallbacks: " + ", ".join(f"{c} {n:,.0f}" for c, n in sorted(fallbacks.items()))
        return text + ")"
    return text + ", no fallback"


def problem(counts: Served) -> str | None:
    fallbacks = sum(n for (algorithm, _), n in counts.items() if algorithm != "ranked")
    if fallbacks:
        return f"{fallbacks:,.0f} ranked requests served chronologically"
    if not counts:
        return "no ranked request counted by the server"
    return None


def idle_percent(args: argparse.Namespace, pids: tuple[int, ...]) -> float:
    """The server's own CPU with no request (% of a core), when pages are compared."""
    if args.algorithm != "both":
        return 0.0
    seconds = float(args.idle_seconds)
    before = sum(cpu.process_seconds(pid) for pid in pids)
    time.sleep(seconds)
    return 100.0 * (sum(cpu.process_seconds(pid) for pid in pids) - before) / seconds


def cpu_ms_per_page(row: Row, idle: float = 0.0) -> float:
    """Server CPU per answered page: its share of a core over the window, less what it
    uses idle, over the pages."""
    return 10.0 * (row.cpu["server"] - idle) / row.achieved if row.achieved else math.nan


def comparison(runs: list[tuple[str, Row]], idle: float) -> list[str]:
    """Each ranked run beside the chronological run before it (same rate, same server)."""
    lines: list[str] = [f"- the idle server used {idle:.1f}% of a core: taken off both"]
    previous: Row | None = None
    for algorithm, row in runs:
        if algorithm == "chronological":
            previous = row
            continue
        if previous is None:
            continue
        chrono, ranked = cpu_ms_per_page(previous, idle), cpu_ms_per_page(row, idle)
        lines.append(
            f"- ranked first page beside a chronological first page at {row.offered:,.0f} "
            f"req/s: server CPU {ranked:.2f} ms against {chrono:.2f} ms per page "
            f"(**{ranked / chrono:.2f}x**, target at most 3x); p50 {row.p50:.1f} against "
            f"{previous.p50:.1f} ms ({row.p50 / previous.p50:.2f}x), p99 {row.p99:.1f} "
            f"against {previous.p99:.1f} ms ({row.p99 / previous.p99:.2f}x)"
        )
        previous = None
    return [*lines, ""] if len(lines) > 1 else []
