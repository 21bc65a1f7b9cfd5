"""The ranked feed's cost beside the chronological one, for feed_read.py (issue 26:
a ranked page should cost at most 3x a chronological page's server CPU).

feed_read runs each rate once per algorithm against the same server, readers and load;
this module only shapes those runs (path, first pages only, the server's time budget),
reads how the server actually served the ranked ones (its /metrics), and compares.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import math
import pstats
import time
import urllib.request
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from scripts.bench import common, cpu
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
        "--ranking-candidates",
        type=int,
        help="the server's RANKING_CANDIDATES (default: the server's own default)",
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
    env = [("RANKING_BUDGET_MS", str(args.ranking_budget_ms))]
    if args.ranking_candidates:
        env.append(("RANKING_CANDIDATES", str(args.ranking_candidates)))
    return tuple(env)


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


# Where a ranked first page's CPU goes, stage by stage, in this process (no HTTP, no load
# generator): `python -m scripts.bench.ranked_cost --readers 300`. The server's own app
# (server/app.py) on the bench data; each reader's chronological first page, then its
# ranked first page, one at a time; process CPU time around each stage of the real code
# path (wrapped, not copied).

STAGES = (
    "candidates",  # their Python work; their reads below
    "reader script",
    "counters",
    "postgres",
    "features",
    "scoring",
    "hydration",
    "snapshot",
)


class Stages:
    """CPU per stage; a stage inside another (the candidates' own hydration of posts the
    caches missed) counts for itself only. Pages run one at a time."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._open: list[str] = []

    def _enter(self, name: str) -> float:
        self._open.append(name)
        return time.process_time()

    def _leave(self, name: str, start: float) -> None:
        spent = time.process_time() - start
        self._open.pop()
        self.cpu[name] += spent
        if self._open:
            self.cpu[self._open[-1]] -= spent

    def timed(self, name: str, fn: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            start = self._enter(name)
            try:
                return await fn(*args, **kwargs)
            finally:
                self._leave(name, start)

        return run

    def timed_sync(self, name: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = self._enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self._leave(name, start)

        return run


async def profile_stages(readers: int, seed: int, passes: int, cprofile: bool) -> None:
    from aiohttp import web

    from ranking import scorer
    from server.app import create_app
    from server.feed.home import FEED, page_body
    from server.feed.ranked import RANKED

    base = common.base_settings()
    settings = replace(
        base,
        database_url=common.database_url(base.database_url, common.BENCH_DB),
        # The replica's copy of the bench database, if reads go to a replica.
        database_read_url=(
            common.database_url(base.database_read_url, common.BENCH_DB)
            if base.database_read_url
            else ""
        ),
        redis_url=common.redis_url(base.redis_url, common.BENCH_REDIS_DB),
        fanout_throttle_max=common.THROTTLE_MAX,
        fanout_push_max=min(common.PUSH_MAX, common.THROTTLE_MAX),
        kafka_topic_prefix="bench.",
        ranking_budget_ms=10_000,
        ranking_log_impressions=False,
        server_port=common.BENCH_PORT + 7,
    )
    logging.basicConfig(level=logging.WARNING)  # a ranked page that fell back says why
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        app = runner.app
        feed, ranked = app[FEED], app[RANKED]
        rows = await ranked._c.db.fetch(
            "SELECT id FROM users ORDER BY md5(id::text || $1::text) LIMIT $2", str(seed), readers
        )
        users = [r["id"] for r in rows]
        stages = Stages()
        candidates, store = ranked.candidates, ranked.store
        candidates.read = stages.timed("candidates", candidates.read)  # type: ignore[method-assign]
        candidates._own_keys = stages.timed("reader script", candidates._own_keys)  # type: ignore[method-assign]
        candidates._from_postgres = stages.timed("postgres", candidates._from_postgres)  # type: ignore[method-assign]
        candidates._counters = stages.timed("counters", candidates._counters)  # type: ignore[method-assign]
        store.engagers = stages.timed("features", store.engagers)  # type: ignore[method-assign]
        store.store_page = stages.timed("snapshot", store.store_page)  # type: ignore[method-assign]
        real_visible = feed.visible
        feed.visible = stages.timed("hydration", feed.visible)  # type: ignore[method-assign]
        rank_columns = scorer.rank_columns
        scorer.rank_columns = stages.timed_sync("scoring", rank_columns)
        collecting: list[float] = [0.0, 0.0]  # when the running collection began, total

        def collected(phase: str, _info: dict[str, int]) -> None:
            if phase == "start":
                collecting[0] = time.process_time()
            else:
                collecting[1] += time.process_time() - collecting[0]

        gc.callbacks.append(collected)
        for done in range(passes):  # the last one counts: process caches warm
            stages.cpu = dict.fromkeys(STAGES, 0.0)
            collecting[1] = 0.0
            profiler = cProfile.Profile() if cprofile and done == passes - 1 else None
            chrono = rank = 0.0
            fallbacks = 0
            for user in users:
                start = time.process_time()
                page_body(await feed.page(user, None, 20), True, "chronological")
                chrono += time.process_time() - start
                if profiler is not None:
                    profiler.enable()
                start = time.process_time()
                body = await ranked.page(user, None, 20)
                rank += time.process_time() - start
                if profiler is not None:
                    profiler.disable()
                fallbacks += body is None
        scorer.rank_columns = rank_columns
        feed.visible = real_visible  # type: ignore[method-assign]
        n = len(users)
        print(f"- {n} readers, one first page each, in process (no HTTP), {fallbacks} fallbacks")
        print(
            f"- ranked {1000 * rank / n:.2f} ms CPU, chronological {1000 * chrono / n:.2f} ms"
            f" ({rank / chrono:.2f}x)"
        )
        staged = sum(stages.cpu.values())
        parts = ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in stages.cpu.items())
        print(f"- ranked stages, ms per page: {parts}, the rest {1000 * (rank - staged) / n:.2f}")
        gc.callbacks.remove(collected)
        print(f"- garbage collection, both algorithms: {1000 * collecting[1] / n:.2f} ms per page")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="A ranked first page's CPU, stage by stage.")
    p.add_argument("--readers", type=int, default=300)
    p.add_argument("--seed", type=int, default=26)
    p.add_argument("--passes", type=int, default=2, help="over the same readers; the last counts")
    p.add_argument("--cprofile", action="store_true", help="profile the last pass's ranked pages")
    args = p.parse_args()
    asyncio.run(profile_stages(args.readers, args.seed, args.passes, args.cprofile))


if __name__ == "__main__":
    main()
