"""Home-timeline read benchmark: `GET /v1/feed?limit=20` at a fixed offered rate.

    .venv/bin/python -m scripts.bench.feed_read --rate 500,1000,2000 --duration 30

Starts the API server against the seeded bench database (scripts/bench/seed.py), runs the
open-loop load generator in a separate process for each rate (warm-up, then a measured
window), measures the machine's latency floor right after each rate (the same load
against a server that does no work, scripts/bench/floor.py) and its own ceiling (Redis
GET, Postgres SELECT 1, the same server's /healthz) in the same run, and prints a
markdown block ready to paste.

    .venv/bin/python -m scripts.bench.feed_read --algorithm both --rate 100 --no-floor

runs each rate twice, chronological then `algorithm=ranked` (the same readers, load and
server), and compares the server's CPU per page and the latency. Both ask for first pages
only: a ranked first page ranks and snapshots its candidates (the expensive case); later
ranked pages only read that snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis

from core import stats
from scripts.bench import common, floor, observe, ranked_cost, tail
from scripts.bench.bench_data import (
    DatasetInfo,
    Target,
    dataset_info,
    mint_tokens,
    prepare_redis,
)
from scripts.bench.ceiling import Ceiling, measure_ceiling
from scripts.bench.cpu import machine
from scripts.bench.loadgen import (
    CLIENT_NAMES,
    CLIENTS,
    Plan,
    Result,
    default_client,
    go_binary,
    run_load,
)
from scripts.bench.progress import note
from scripts.bench.report import Row, revision, summarize, table
from scripts.bench.server_proc import ROOT, RunningServer, ServerConfig, running_server


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", default="2000", help="offered req/s; a comma list runs each")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds per rate")
    p.add_argument("--users", type=int, default=0, help="readers drawn from (0: every user)")
    p.add_argument("--connections", type=int, default=64, help="client connection pool size")
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default=default_client(),
        help="load generator, for the feed runs and the /healthz ceiling alike (only go: "
        "scripts/bench/loadgen_go)",
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument(
        "--second-page-share",
        type=float,
        default=0.1,
        help="share of requests asking for a second page (0 whenever ranked pages run: "
        "first pages are compared)",
    )
    ranked_cost.add_arguments(p)
    p.add_argument("--port", type=int, default=common.BENCH_PORT)
    p.add_argument("--db", default=common.BENCH_DB)
    p.add_argument("--redis-db", type=int, default=common.BENCH_REDIS_DB)
    p.add_argument("--throttle-max", type=int, default=common.THROTTLE_MAX)
    p.add_argument(
        "--cold",
        action="store_true",
        help="flush the bench Redis db first (timelines and post cache rebuilt on read) "
        "and measure the first rate without warm-up",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        help="before each run wait (up to --quiet-wait s) until the machine uses less than "
        "this %% of a core",
    )
    p.add_argument("--quiet-wait", type=float, default=300.0)
    p.add_argument(
        "--max-other",
        type=float,
        default=25.0,
        help="a run during which other processes used more than this %% of a core is invalid",
    )
    p.add_argument(
        "--max-redis-per-request",
        type=float,
        default=150.0,
        help="a run during which the shared Redis ran more than this many commands per "
        "offered request (+5000/s) had other clients: invalid (a feed read needs 35-60, "
        "counting the commands a script runs)",
    )
    p.add_argument("--retries", type=int, default=3, help="re-runs of an invalid run")
    p.add_argument("--no-ceiling", action="store_true", help="skip the machine ceiling runs")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the latency floor run after each rate (the same load against a no-op "
        "Go server: what the machine itself allows; it doubles each rate's time)",
    )
    p.add_argument(
        "--profile", choices=("pyinstrument", "cprofile"), help="profile the server process"
    )
    p.add_argument(
        "--profile-out", default=str(Path(tempfile.gettempdir()) / "feed-server-profile")
    )
    p.add_argument(
        "--server-processes",
        type=int,
        default=1,
        help="server processes sharing the port (needs SO_REUSEPORT in the server)",
    )
    p.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="run the server from another checkout (e.g. a patched copy, for A/B runs)",
    )
    return p.parse_args(argv)


def feed_plan(args: argparse.Namespace, server: RunningServer, tokens: list[str]) -> Plan:
    return Plan(
        base_url=server.base_url,
        path=f"/v1/feed?limit={args.limit}",
        tokens=tokens,
        rate=0.0,
        warmup=args.warmup,
        duration=args.duration,
        connections=args.connections,
        second_page_share=args.second_page_share,
    )


def client_cost(args: argparse.Namespace, result: Result, spent: dict[str, float]) -> str:
    """The load generator's own CPU over the measured window, per request scheduled."""
    seconds = spent.get("loadgen", 0.0)
    per_request = 1000.0 * seconds / result.scheduled if result.scheduled else math.nan
    return (
        f"{args.client} client {100.0 * seconds / result.duration:.0f}% of a core, "
        f"{per_request:.3f} ms CPU per request"
    )


def page2_share(result: Result) -> str:
    """Second pages actually asked for: only readers with a cursor learnt in warm-up can."""
    answered = sum(len(v) for v in result.latencies.values())
    page2 = len(result.latencies.get("page2", []))
    share = page2 / answered if answered else 0.0
    return f"{page2:,} second pages ({share:.1%} of answers)"


@dataclass(frozen=True, slots=True)
class Measured:
    row: Row
    result: Result
    context: str  # where timelines were read from; why a run is invalid, if it is
    valid: bool
    tail: list[str]  # when the slow requests came, and what the machine did then
    floor: Row | None = None  # the same load against a no-op server, right after
    floor_tail: tuple[str, ...] = ()
    algorithm: str = "chronological"


def measure_one(
    args: argparse.Namespace, server: RunningServer, plan: Plan, label: str, target: Target
) -> Measured:
    run_id = observe.redis_run_id(target.redis_url)
    reads_before = observe.server_reads(target.redis_url)
    commands = observe.redis_commands(target.redis_url)
    sampler = tail.Sampler(
        {"server": server.pids, "redis": (observe.redis_pid(target.redis_url),)}
    ).start()
    try:
        result, spent = run_load(args, plan, server.pids)
    finally:
        samples = sampler.stop()
    window = (result.window_start, result.window_start + plan.duration)
    tail_lines = tail.explain(window, result.slow, samples, plan.slow_after)
    time.sleep(stats.REPORT_EVERY + 0.2)  # the processes' last snapshots of the window
    reads = observe.reads_between(reads_before, observe.server_reads(target.redis_url))
    commands = observe.redis_commands(target.redis_url) - commands
    row = summarize(label, result, spent)
    context = (
        f"{plan.rate:,.0f} req/s: timeline reads (warm-up included) "
        + (", ".join(f"{k} {n:,}" for k, n in sorted(reads.items())) or "not reported")
        + f"; Redis ran {commands / (plan.warmup + plan.duration):,.0f} commands/s "
        f"(all clients); {page2_share(result)}; {client_cost(args, result, spent)}"
    )
    problem = None
    redis_rate = commands / (plan.warmup + plan.duration)
    if observe.redis_run_id(target.redis_url) != run_id:
        problem = "Redis restarted (timelines lost)"
    elif redis_rate > args.max_redis_per_request * plan.rate + 5_000:
        problem = f"Redis busy with other clients ({redis_rate:,.0f} commands/s)"
    elif row.cpu["other"] > args.max_other:
        problem = f"other processes used {row.cpu['other']:.0f}% of a core"
    if problem:
        row = replace(row, label=f"{label} (INVALID: {problem})")
        context += f"; INVALID: {problem}"
    shares = " / ".join(f"{g} {row.cpu[g]:.0f}%" for g in row.cpu)
    note(
        f"feed: {plan.rate:,.0f} req/s ({args.client} client) -> p50 {row.p50:.1f} ms "
        f"p99 {row.p99:.1f} ms; CPU {shares}"
    )
    note(f"feed: {context}")
    for line in tail_lines:
        note(f"feed: tail: {line}")
    return Measured(row, result, context, problem is None, tail_lines)


def measure_feed(
    args: argparse.Namespace, server: RunningServer, tokens: list[str], target: Target
) -> list[Measured]:
    """Each rate in turn; a run spoilt by something outside the benchmark (the shared
    Redis restarted, another process took the cores) is repeated up to --retries times."""
    done: list[Measured] = []
    base = feed_plan(args, server, tokens)
    args.idle_percent = ranked_cost.idle_percent(args, server.pids)
    for n, rate in enumerate(float(r) for r in args.rate.split(",")):
        cold = args.cold and n == 0
        for algorithm in ranked_cost.algorithms(args):
            plan = ranked_cost.plan_for(
                args, replace(base, rate=rate, warmup=0.0 if cold else base.warmup), algorithm
            )
            label = ranked_cost.label("feed, cold" if cold else "feed", algorithm)
            for attempt in range(args.retries + 1):
                prepare_redis(args, target, cold)
                note(
                    f"feed: {rate:,.0f} req/s {algorithm}, warm-up {plan.warmup:.0f} s, "
                    f"measure {plan.duration:.0f} s (attempt {attempt + 1})"
                )
                served = ranked_cost.served(server.base_url)
                measured = measure_one(args, server, plan, label, target)
                served = ranked_cost.since(served, ranked_cost.served(server.base_url))
                if algorithm == "ranked":
                    measured = ranked_checked(measured, served)
                if measured.valid:
                    break
            if not args.no_floor:
                measured = with_floor(args, server, plan, tokens[0], measured)
            done.append(replace(measured, algorithm=algorithm))
    return done


def ranked_checked(measured: Measured, served: ranked_cost.Served) -> Measured:
    """A ranked run in which the server fell back to chronological pages measured the
    fallback, not ranking: invalid (and repeated, as any invalid run)."""
    context = f"{measured.context}; {ranked_cost.describe(served)}"
    problem = ranked_cost.problem(served)
    if problem is None:
        return replace(measured, context=context)
    label = f"{measured.row.label} (INVALID: {problem})"
    note(f"feed: INVALID: {problem}")
    return replace(
        measured,
        row=replace(measured.row, label=label),
        context=f"{context}; INVALID: {problem}",
        valid=False,
    )


def with_floor(
    args: argparse.Namespace, server: RunningServer, plan: Plan, token: str, measured: Measured
) -> Measured:
    """The run with the machine's floor at the same load beside it."""
    body = floor.sample_page(server.base_url, plan.path, token)
    note(f"feed: floor at {plan.rate:,.0f} req/s ({len(body):,} byte answers, no work)")
    row, lines = floor.measure_floor(args, plan, body)
    note(
        f"feed: floor -> p50 {row.p50:.1f} ms p99 {row.p99:.1f} ms "
        f"(feed p99 {measured.row.p99:.1f} ms)"
    )
    for line in lines:
        note(f"feed: floor tail: {line}")
    return replace(measured, floor=row, floor_tail=tuple(lines))


def markdown(
    args: argparse.Namespace, info: DatasetInfo, runs: list[Measured], ceil: Ceiling | None
) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    warm = runs[-1].result if runs else None
    lines = [
        f"### Feed read, {today}",
        "",
        f"- machine: {machine()}; load generator, server, Postgres, Redis and Kafka "
        "share these cores",
        f"- dataset: {info.line(args.throttle_max)}",
        f"- server: {args.server_processes} `python -m server` process(es) at "
        f"`{revision(args.server_root)}` "
        f"(`{args.server_root}`), FANOUT_THROTTLE_MAX={args.throttle_max}; "
        f"client: {CLIENT_NAMES[args.client]}, one process, {args.connections} connections, "
        "open loop, "
        f"`limit={args.limit}`, {args.second_page_share:.0%} second pages among readers "
        "with a cursor from warm-up, "
        f"{args.users or info.users:,} distinct readers",
        f"- each rate: {args.warmup:.0f} s warm-up (not measured), {args.duration:.0f} s "
        "measured; latency from the scheduled send time",
    ]
    if warm is not None and warm.warm_pages:
        lines.append(
            f"- warm-up pages held {warm.warm_posts / warm.warm_pages:.1f} posts on average "
            f"({warm.warm_errors} warm-up errors)"
        )
    rows = [row for m in runs for row in (m.row, m.floor) if row is not None]
    lines += ["", table(rows), ""]
    lines += ranked_cost.comparison([(m.algorithm, m.row) for m in runs], args.idle_percent)
    if any(m.floor for m in runs):
        lines += [
            f"`{floor.LABEL}`: right after each rate, the same load (rate, connections, "
            "requests, measured seconds) against a one-thread Go server that answers a "
            "real page's bytes and does nothing else (`scripts/bench/floor.py`). Its tail "
            "is the machine's, and the feed's can be no better.",
            "",
        ]
    for m in runs:
        lines += [f"- {m.context}", *tail.markdown(m.tail, indent="  ")]
        if m.floor_tail:
            floor_lines = tail.markdown(list(m.floor_tail), indent="    ")
            lines += ["  - the floor right after:", *floor_lines]
    lines.append("")
    if ceil is not None:
        lines += [
            f"Machine ceiling, measured in the same run (`/healthz` through the same "
            f"{args.client} client):",
            "",
            *ceil.lines(),
            "",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    base = common.base_settings()
    db_url = common.database_url(base.database_url, args.db)
    redis_url = common.redis_url(base.redis_url, args.redis_db)
    args.redis_port = urlsplit(redis_url).port or 6379  # tells our Redis from other stacks'
    info, user_ids = asyncio.run(dataset_info(db_url, args.throttle_max))
    tokens = mint_tokens(user_ids, args.users)
    target = Target(db_url, redis_url, user_ids)
    config = ServerConfig(
        db_url,
        redis_url,
        args.port,
        args.throttle_max,
        root=args.server_root,
        processes=args.server_processes,
        extra_env=ranked_cost.server_env(args),
    )
    if args.profile:
        config = replace(
            config,
            module="scripts.bench.profiled",
            extra_env=(
                *config.extra_env,
                ("BENCH_PROFILE", args.profile),
                ("BENCH_PROFILE_OUT", args.profile_out),
            ),
        )
    if args.client == "go":
        note(f"feed: Go load generator {go_binary()}")
    with running_server(config) as server:
        note(f"feed: server pids {server.pids} ready at {server.base_url} (log {server.log_path})")
        runs = measure_feed(args, server, tokens, target)
        ceil = None
        if not args.no_ceiling:
            top = max(float(r) for r in args.rate.split(","))
            ceil = measure_ceiling(args, db_url, args.redis_port, server, top)
    return markdown(args, info, runs, ceil)


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the server and load generator children are stopped
    instead of orphaned (a script's background job ignores SIGINT, so SIGTERM is the way
    to stop one)."""

    def stop(signum: int, _frame: object) -> None:
        sys.exit(f"feed_read: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _stop_on_sigterm()
    try:
        print(run(args))
    except (common.BenchError, OSError, asyncpg.PostgresError, redis.RedisError) as exc:
        sys.exit(f"feed_read: error: {exc}")


if __name__ == "__main__":
    main()
