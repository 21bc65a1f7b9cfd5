"""Home-timeline read benchmark: `GET /v1/feed?limit=20` at a fixed offered rate.

    .venv/bin/python -m scripts.bench.feed_read --rate 500,1000,2000 --duration 30

Starts the API server against the seeded bench database (scripts/bench/seed.py), runs the
open-loop load generator in a separate process for each rate (warm-up, then a measured
window), measures the machine's own ceiling (Redis GET, Postgres SELECT 1, the same
server's /healthz) in the same run, and prints a markdown block ready to paste.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis

from core import keys
from core.auth import TokenSigner
from core.settings import Settings
from scripts.bench import ceiling, common, cpu, observe
from scripts.bench.loadgen import Plan, Result, run_in_process
from scripts.bench.progress import note
from scripts.bench.report import Row, summarize, table
from scripts.bench.server_proc import ROOT, RunningServer, ServerConfig, running_server
from scripts.bench.timelines import build_timelines

HEALTHZ_SECONDS = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", default="2000", help="offered req/s; a comma list runs each")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds per rate")
    p.add_argument("--users", type=int, default=0, help="readers drawn from (0: every user)")
    p.add_argument("--connections", type=int, default=64, help="client connection pool size")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--second-page-share", type=float, default=0.1)
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


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    users: int
    follows: int
    posts: int
    median_following: float
    max_followers: int
    celebrities: int
    readers_following_celebrities: int

    def line(self, throttle_max: int) -> str:
        return (
            f"{self.users:,} users, {self.follows:,} follows (median following "
            f"{self.median_following:.0f}, max followers {self.max_followers:,}), "
            f"{self.posts:,} posts; {self.celebrities} celebrity-tier authors "
            f"(> {throttle_max:,} followers, merged at read time), followed by "
            f"{self.readers_following_celebrities:,} users"
        )


async def dataset_info(url: str, throttle_max: int) -> tuple[DatasetInfo, list[int]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM follows) AS f,"
            " (SELECT count(*) FROM posts) AS posts,"
            " (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY following_count) FROM users)"
            "   AS med, (SELECT max(follower_count) FROM users) AS top,"
            " (SELECT count(*) FROM users WHERE follower_count > $1) AS celebs,"
            " (SELECT count(DISTINCT f.follower_id) FROM follows f JOIN users u"
            "   ON u.id = f.followee_id WHERE u.follower_count > $1) AS celeb_readers",
            throttle_max,
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM users ORDER BY id")]
    finally:
        await conn.close()
    assert row is not None
    if not row["users"]:
        raise common.BenchError("the bench database is empty: run scripts.bench.seed first")
    info = DatasetInfo(
        row["users"],
        row["f"],
        row["posts"],
        row["med"],
        row["top"],
        row["celebs"],
        row["celeb_readers"],
    )
    return info, ids


def mint_tokens(user_ids: list[int], sample: int) -> list[str]:
    """Tokens for `sample` random seeded users (signed like sign-in would, no round trip)."""
    chosen = user_ids if not sample else random.Random(3).sample(user_ids, sample)  # noqa: S311
    signer = TokenSigner(common.BENCH_SECRET, 24 * 3600)
    return [signer.issue(uid) for uid in chosen]


def run_load(
    args: argparse.Namespace, plan: Plan, server_pids: tuple[int, ...]
) -> tuple[Result, Counter[str]]:
    """Run one plan in a separate process; CPU per group over its measured window."""
    cpu.wait_quiet(args.quiet_below, args.quiet_wait)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_in_process, args=(plan, sender), name="loadgen")
    proc.start()
    sender.close()
    named = {pid: "server" for pid in server_pids} | {proc.pid or 0: "loadgen"}
    before: cpu.Snapshot = {}
    spent: Counter[str] = Counter()
    try:
        while True:
            kind, value = receiver.recv()
            if (kind, value) == ("window", "start"):
                before = cpu.snapshot(args.db, args.redis_port)
            elif (kind, value) == ("window", "end"):
                spent = cpu.usage(before, cpu.snapshot(args.db, args.redis_port), named)
            elif kind == "result":
                return value, spent
    except EOFError:
        raise common.BenchError(f"load generator died (exit code {proc.exitcode})") from None
    except BaseException:
        proc.terminate()  # our own child: stopping early, its load is no longer wanted
        raise
    finally:
        proc.join(30)


@dataclass(frozen=True, slots=True)
class Ceiling:
    redis_get_p16: float | None
    redis_get_p1: float | None
    pg_one: float
    pg_eight: float
    healthz: Row | None

    def lines(self) -> list[str]:
        def rate(value: float | None) -> str:
            return "n/a" if value is None else f"{value:,.0f}/s"

        out = [
            f"- Redis GET (redis-benchmark, 50 clients): {rate(self.redis_get_p16)} "
            f"pipelined x16, {rate(self.redis_get_p1)} unpipelined",
            f"- Postgres `SELECT 1` (asyncpg): {self.pg_one:,.0f}/s on one connection, "
            f"{self.pg_eight:,.0f}/s over 8 connections",
        ]
        if self.healthz is not None:
            h = self.healthz
            out.append(
                f"- the same server's `GET /healthz` (no Redis/Postgres work) at "
                f"{h.offered:,.0f} req/s: p50 {h.p50:.1f} ms, p99 {h.p99:.1f} ms, "
                f"max {h.max:.1f} ms, server CPU {h.cpu['server']:.0f}%, "
                f"client CPU {h.cpu['loadgen']:.0f}%"
            )
        return out


def measure_ceiling(
    args: argparse.Namespace, db_url: str, redis_port: int, server: RunningServer, rate: float
) -> Ceiling:
    cpu.wait_quiet(args.quiet_below, args.quiet_wait)
    note("ceiling: redis-benchmark")
    p16 = ceiling.redis_get_rate(redis_port, 16)
    p1 = ceiling.redis_get_rate(redis_port, 1)
    note("ceiling: asyncpg SELECT 1")
    pg_one = asyncio.run(ceiling.pg_select1_rate(db_url, 1))
    pg_eight = asyncio.run(ceiling.pg_select1_rate(db_url, 8))
    note(f"ceiling: /healthz at {rate:,.0f} req/s for {HEALTHZ_SECONDS:.0f} s")
    plan = Plan(
        base_url=server.base_url,
        path="/healthz",
        tokens=["-"],
        rate=rate,
        warmup=2.0,
        duration=HEALTHZ_SECONDS,
        connections=args.connections,
    )
    result, spent = run_load(args, plan, server.pids)
    return Ceiling(p16, p1, pg_one, pg_eight, summarize("/healthz", result, spent))


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


@dataclass(frozen=True, slots=True)
class Target:
    """The bench data the server reads."""

    db_url: str
    redis_url: str
    user_ids: list[int]


@dataclass(frozen=True, slots=True)
class Measured:
    row: Row
    result: Result
    context: str  # where timelines were read from; why a run is invalid, if it is
    valid: bool


def measure_one(
    args: argparse.Namespace, server: RunningServer, plan: Plan, label: str, target: Target
) -> Measured:
    run_id = observe.redis_run_id(target.redis_url)
    reads = observe.timeline_reads(server.base_url)
    commands = observe.redis_commands(target.redis_url)
    result, spent = run_load(args, plan, server.pids)
    reads = observe.timeline_reads(server.base_url) - reads
    commands = observe.redis_commands(target.redis_url) - commands
    row = summarize(label, result, spent)
    context = (
        f"{plan.rate:,.0f} req/s: timeline reads (warm-up included) "
        + (", ".join(f"{k} {n:,}" for k, n in sorted(reads.items())) or "not exported")
        + f"; Redis ran {commands / (plan.warmup + plan.duration):,.0f} commands/s "
        "(all clients)"
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
    note(f"feed: {plan.rate:,.0f} req/s -> p50 {row.p50:.1f} ms p99 {row.p99:.1f} ms; CPU {shares}")
    note(f"feed: {context}")
    return Measured(row, result, context, problem is None)


def measure_feed(
    args: argparse.Namespace, server: RunningServer, tokens: list[str], target: Target
) -> list[Measured]:
    """Each rate in turn; a run spoilt by something outside the benchmark (the shared
    Redis restarted, another process took the cores) is repeated up to --retries times."""
    done: list[Measured] = []
    base = feed_plan(args, server, tokens)
    for n, rate in enumerate(float(r) for r in args.rate.split(",")):
        cold = args.cold and n == 0
        plan = replace(base, rate=rate, warmup=0.0 if cold else base.warmup)
        label = "feed, cold" if cold else "feed"
        for attempt in range(args.retries + 1):
            prepare_redis(args, target, cold)
            note(
                f"feed: {rate:,.0f} req/s, warm-up {plan.warmup:.0f} s, "
                f"measure {plan.duration:.0f} s (attempt {attempt + 1})"
            )
            measured = measure_one(args, server, plan, label, target)
            if measured.valid:
                break
        done.append(measured)
    return done


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


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


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
        f"client: one process, {args.connections} connections, open loop, "
        f"`limit={args.limit}`, {args.second_page_share:.0%} second pages, "
        f"{args.users or info.users:,} distinct readers",
        f"- each rate: {args.warmup:.0f} s warm-up (not measured), {args.duration:.0f} s "
        "measured; latency from the scheduled send time",
    ]
    if warm is not None and warm.warm_pages:
        lines.append(
            f"- warm-up pages held {warm.warm_posts / warm.warm_pages:.1f} posts on average "
            f"({warm.warm_errors} warm-up errors)"
        )
    lines += ["", table([m.row for m in runs]), *(f"- {m.context}" for m in runs), ""]
    if ceil is not None:
        lines += ["Machine ceiling, measured in the same run:", "", *ceil.lines(), ""]
    return "\n".join(lines)


def prepare_redis(args: argparse.Namespace, target: Target, cold: bool) -> None:
    """Cold: empty the bench Redis db. Warm: make sure every timeline is there (a restart
    of the shared Redis, which keeps nothing on disk, silently turns a warm run cold)."""
    with redis.Redis.from_url(target.redis_url) as client:
        if cold:
            client.flushdb()
            note(f"feed: flushed {target.redis_url} (cold start)")
            return
        rng = random.Random(5)  # noqa: S311 - a sample to check, not security
        sample = rng.sample(target.user_ids, min(200, len(target.user_ids)))
        present = client.exists(*(keys.timeline(u) for u in sample))
    if present < len(sample):
        note(f"feed: only {present}/{len(sample)} sampled timelines in Redis; rebuilding them")
        cap = Settings().timeline_cap
        asyncio.run(build_timelines(target.db_url, target.redis_url, args.throttle_max, cap))


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
    )
    if args.profile:
        config = replace(
            config,
            module="scripts.bench.profiled_server",
            extra_env=(("BENCH_PROFILE", args.profile), ("BENCH_PROFILE_OUT", args.profile_out)),
        )
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
