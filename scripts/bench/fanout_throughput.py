"""Fan-out throughput: how many timeline writes per second one worker sustains.

    .venv/bin/python -m scripts.bench.fanout_throughput [--reset] [--redis-cluster N]

In one run: the raw Redis ZADD ceiling (redis-benchmark), the follower query and the
timeline writer each alone, then one real `python -m fanout` worker fed PostCreated
events through Kafka: a post by an author with 200 000 active followers, and a stream of
2 000 posts by authors with 100 followers each. Prints a markdown block and writes it to
scripts/bench/results/fanout.md. Uses its own database (feed_bench_fanout), Redis db 6 and
topic prefix (bench-fanout-; topics deleted at the end). Everything shares this machine's
cores: worker, Redis, Postgres, Kafka and this script.

--redis-cluster N runs the same against a Redis Cluster of N masters the script starts
(scripts/redis_cluster.py, torn down at the end) instead of the stack's Redis: the
worker runs with REDIS_CLUSTER=true, a batch becomes one script call per node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import shlex
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from core.clients import CONNECT_ERRORS, create_admin, create_producer, ensure_topics
from core.settings import Settings
from core.topics import Topics
from scripts.bench import cpu as load
from scripts.bench.common import BenchError
from scripts.bench.cpu import machine
from scripts.bench.fanout_ceiling import (
    follower_query_rate,
    writer_rate,
    writer_rate_at_cap,
    zadd_ceilings,
)
from scripts.bench.fanout_common import ROOT, Shape, Target
from scripts.bench.fanout_report import Report, dataset_line, render
from scripts.bench.fanout_scenarios import Run, celebrity, stream, warm_up
from scripts.bench.fanout_seed import Dataset, build_timelines, seed_postgres
from scripts.bench.fanout_worker import WorkerConfig, running_worker
from scripts.bench.progress import note
from scripts.redis_cluster import redis_cluster

RESULTS = Path(__file__).with_name("results") / "fanout.md"
# The 200 000-follower author would be throttled (FANOUT_THROTTLE_RATE, 50 000 writes/s)
# under the default FANOUT_PUSH_MAX of 100 000. The bench measures how fast fan-out can
# write, so it lifts the push tier to the throttle ceiling: that author is pushed.
PUSH_MAX = 1_000_000
AT_CAP_POSTS = 4  # posts written into the at-cap timelines (each one write per timeline)
HEADER = """# Fan-out throughput

Written by `scripts/bench/fanout_throughput.py` (see its docstring). Target from
../shared/DESIGN.md: >= 250 000 timeline writes/s sustained on one 2-core machine.

"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    shape = Shape()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reset", action="store_true", help="drop and reseed the bench database")
    p.add_argument("--followers", type=int, default=shape.followers)
    p.add_argument("--authors", type=int, default=shape.authors)
    p.add_argument("--per-author", type=int, default=shape.per_author)
    p.add_argument("--celebrity-posts", type=int, default=1)
    p.add_argument("--stream-posts", type=int, default=2_000)
    p.add_argument("--batch-size", type=int, default=Settings().fanout_batch_size)
    p.add_argument("--ceiling-requests", type=int, default=2_000_000)
    p.add_argument(
        "--at-cap", type=int, default=10_000, help="timelines filled to the cap for the writer"
    )
    p.add_argument("--skip-ceiling", action="store_true", help="no redis-benchmark runs")
    p.add_argument("--skip-layers", action="store_true", help="no query/writer-alone runs")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between /metrics polls")
    p.add_argument("--worker-root", type=Path, default=ROOT, help="checkout to run fanout from")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--profile-out", type=Path, help="run the worker under cProfile")
    p.add_argument("--title", default="", help="heading of the results block")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--append", action="store_true", help="append to --results, not replace")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--quiet-below", type=float, default=40.0, help="%% of a core; 0: no wait")
    p.add_argument("--quiet-timeout", type=float, default=300.0, help="seconds to wait for it")
    p.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="start a Redis Cluster of N masters for the run (0: the stack's Redis)",
    )
    args = p.parse_args(argv)
    if args.redis_cluster < 0:
        p.error("--redis-cluster wants a number of masters, 1 or more (0: none)")
    return args


def _extra_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BenchError(f"--worker-env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def _worker_settings(args: argparse.Namespace) -> dict[str, str]:
    return {
        "FANOUT_PUSH_MAX": str(PUSH_MAX),
        "FANOUT_BATCH_SIZE": str(args.batch_size),
        "LOG_LEVEL": "WARNING",
        "FANOUT_OFFSET_RESET": "latest",
    }


@contextlib.asynccontextmanager
async def _topics(settings: Settings, keep: bool) -> AsyncIterator[Topics]:
    topics = Topics.for_settings(settings)
    admin = await create_admin(settings)
    try:
        await ensure_topics(admin, topics.all(), settings.kafka_partitions)
        yield topics
    finally:
        if not keep:
            await admin.delete_topics(list(topics.all()))
            note(f"kafka: deleted topics {settings.kafka_topic_prefix}*")
        await admin.close()


async def _layers(
    report: Report, args: argparse.Namespace, settings: Settings, data: Dataset, target: Target
) -> None:
    """Each half of a fan-out batch alone, on the same data, so the worker's number can be
    read as "how close to the slower half" and "how much the halves overlap"."""
    async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) as db:
        report.layers.append(
            await follower_query_rate(
                db, data.celebrity, args.batch_size, settings.fanout_active_days
            )
        )
    client = target.redis_client(socket_timeout=60)
    try:
        cap, slack = settings.timeline_cap, settings.timeline_trim_slack
        report.layers.append(await writer_rate(client, data.pool, args.batch_size, cap, 1, slack))
        if isinstance(client, aioredis.Redis):  # its fill script is single-node
            report.layers.append(
                await writer_rate_at_cap(
                    client, args.at_cap, args.batch_size, cap, slack, AT_CAP_POSTS
                )
            )
    finally:
        await client.aclose()


def _profile_env(out: Path) -> dict[str, str]:
    return {"BENCH_PROFILE_SERVICE": "fanout", "BENCH_PROFILE_OUT": str(out)}


async def _scenarios(
    report: Report, args: argparse.Namespace, settings: Settings, data: Dataset, target: Target
) -> None:
    config = WorkerConfig(
        target=target,
        settings_env=_worker_settings(args),
        root=args.worker_root,
        module="scripts.bench.profiled" if args.profile_out else "fanout",
        extra_env={
            **_extra_env(args.worker_env),
            **(_profile_env(args.profile_out) if args.profile_out else {}),
        },
    )
    client = target.redis_client(socket_timeout=60)
    producer = await create_producer(settings)
    log_dir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    try:
        async with (
            _topics(settings, args.keep_topics) as topics,
            asyncpg.create_pool(settings.database_url, min_size=1, max_size=4) as db,
        ):
            with running_worker(config, log_dir) as worker:
                worker.wait_assigned(topics.posts, settings.kafka_partitions)
                run = Run.create(data, db, client, producer, topics, worker, args.poll, target)
                await warm_up(run)
                if args.celebrity_posts:
                    report.results.append(await celebrity(run, args.celebrity_posts))
                if args.stream_posts:
                    report.results.append(await stream(run, args.stream_posts))
    finally:
        await producer.stop()
        await client.aclose()


async def _rebuild_timelines(target: Target, data: Dataset) -> None:
    client = target.redis_client(socket_timeout=60)
    try:
        await build_timelines(client, data)
    finally:
        await client.aclose()


async def _versions(target: Target) -> str:
    client = aioredis.Redis.from_url(target.redis_url)  # one node is enough for this
    try:
        redis_version = (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()
    conn = await asyncpg.connect(target.maintenance_url, timeout=10)
    try:
        pg_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"Redis {redis_version}, PostgreSQL {pg_version}, Python {sys.version.split()[0]}"


async def main_async(args: argparse.Namespace, command: str) -> Report:
    base = Target(Settings.from_env())
    if not args.redis_cluster:
        return await _measure(args, command, base)
    with (
        tempfile.TemporaryDirectory(prefix="fanout-cluster-") as workdir,
        redis_cluster(Path(workdir), args.redis_cluster) as local,
    ):
        ports = ", ".join(map(str, local.ports))
        note(f"redis: a cluster of {len(local.ports)} masters on ports {ports}")
        target = dataclasses.replace(base, cluster_url=local.url, cluster_ports=local.ports)
        return await _measure(args, command, target)


async def _measure(args: argparse.Namespace, command: str, target: Target) -> Report:
    settings = target.settings()
    # Other work on these two cores would be measured as fan-out slowness: wait for a
    # quiet machine (bounded), and report what was running anyway.
    if args.quiet_below > 0:
        busy = load.wait_quiet(args.quiet_below, args.quiet_timeout)
    else:
        busy = load.machine_busy(1.0)
    note(f"machine: {busy:.0f}% of a core busy before the run (other processes)")
    report = Report(
        title=args.title or f"Fan-out throughput, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        command=command,
        machine=machine()
        + "; worker, Redis, Postgres, Kafka and this script all share these cores",
        busy_before=busy,
        dataset=dataset_line(
            args.followers, args.authors, args.per_author, (args.celebrity_posts, args.stream_posts)
        ),
        settings=_worker_settings(args) | _extra_env(args.worker_env),
    )
    report.notes.append(
        f"FANOUT_PUSH_MAX raised to {PUSH_MAX:,} (= the default FANOUT_THROTTLE_MAX) so the "
        f"{args.followers:,}-follower author is pushed, not throttled at FANOUT_THROTTLE_RATE"
    )
    report.notes.append(
        "no follower is online: no PUBLISH, and every batch also looks up devices for its "
        "offline followers (the table is empty, so no push jobs)"
    )
    if target.cluster_url:
        report.notes.append(
            f"Redis: a cluster of {len(target.cluster_ports)} masters started for this run "
            "(no replicas), each a redis-server on these same cores; the worker runs with "
            "REDIS_CLUSTER=true. The ceilings are redis-benchmark --cluster."
        )
    if args.worker_root != ROOT:
        report.notes.append(f"worker run from {args.worker_root} (a patched copy)")
    if args.profile_out:
        report.notes.append("worker under cProfile: rates are slowed by the profiler")
    report.notes.append(await _versions(target))
    report.notes.append(
        "Redis and CPU figures count everything on the shared servers in the window "
        "(other benchmarks or test suites running at the same time show up there)"
    )
    if not args.skip_ceiling:
        client = target.redis_client(socket_timeout=60)
        try:
            report.ceilings = await zadd_ceilings(client, target, args.ceiling_requests, 200_000)
        finally:
            await client.aclose()
    shape = Shape(args.followers, args.authors, args.per_author)
    data = await seed_postgres(target, shape, args.reset)
    await _rebuild_timelines(target, data)
    if not args.skip_layers:
        await _layers(report, args, settings, data, target)
        # The writer left fake posts in every timeline (and the db is no longer fresh).
        await _rebuild_timelines(target, dataclasses.replace(data, fresh=False))
    await _scenarios(report, args, settings, data, target)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(
        [".venv/bin/python", "-m", "scripts.bench.fanout_throughput", *(argv or sys.argv[1:])]
    )
    try:
        report = asyncio.run(main_async(args, command))
    except BenchError as exc:
        sys.exit(f"fanout_throughput: error: {exc}")
    except CONNECT_ERRORS as exc:
        # The stack is shared: a test run stopping Redis or Kafka mid-benchmark ends up here.
        sys.exit(f"fanout_throughput: error: lost a dependency ({type(exc).__name__}: {exc})")
    text = render(report)
    print(text)
    if args.append and args.results.exists():
        text = args.results.read_text() + "\n" + text
    else:
        text = HEADER + text
    args.results.write_text(text)
    note(f"wrote {args.results}")


if __name__ == "__main__":
    main()
