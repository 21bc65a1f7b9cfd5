"""Builds the fan-out worker process: Postgres (followers), Redis (timelines) and Kafka
(events in, push jobs and dead letters out) are all required. Its HTTP port serves only
health and metrics; the work is the consumer task, supervised: if it dies, the process
stops (exit 1) so that a fresh one takes its place."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from core.clients import build_consumer, create_redis_cluster
from core.ids import IdLease
from core.replica import READS, replica_ctx
from core.resources import DB, PRODUCER, REDIS, postgres_ctx, producer_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings
from core.stats import reporter
from core.supervision import SUPERVISOR, Child, Policy, Supervisor
from core.tiers import TierPolicy
from core.topics import Topics
from fanout.consumer import FanoutConsumer
from fanout.event_handlers import Deps, Handlers
from fanout.metrics import FanoutMetrics
from fanout.stats import snapshotter
from fanout.writer import TimelineWriter

log = logging.getLogger(__name__)
CONSUMER = web.AppKey("fanout_consumer", FanoutConsumer)


async def fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    topics = Topics.for_settings(settings)
    lease = IdLease(app[DB], holder=f"{socket.gethostname()}:fanout:{os.getpid()}")
    metrics = FanoutMetrics.create(app[OPS].registry)
    # On a cluster, timelines go through a cluster client (slot-aware): redis_ctx's own
    # when it made one, else one of ours (its plain client then only serves the probe).
    timelines: aioredis.Redis | RedisCluster = app[REDIS]
    if settings.redis_cluster and not isinstance(timelines, RedisCluster):
        timelines = await create_redis_cluster(settings)
    writer = TimelineWriter(
        timelines,
        settings.timeline_cap,
        settings.timeline_trim_slack,
        settings.redis_replica_wait_ms,
        metrics.unreplicated_batches,
    )
    deps = Deps(
        settings=settings,
        db=app[DB],
        reads=app[READS],
        redis=timelines,
        writer=writer,
        producer=app[PRODUCER],
        topics=topics,
        ids=await lease.acquire(),
        policy=TierPolicy(settings, timelines),
        metrics=metrics,
    )
    kafka_consumer = build_consumer(
        settings,
        settings.fanout_group,
        client_id=f"fanout-{os.getpid()}",
        auto_offset_reset=settings.fanout_offset_reset,
    )
    await kafka_consumer.start()
    consumer = FanoutConsumer(kafka_consumer, app[PRODUCER], Handlers(deps), topics, metrics)
    app[CONSUMER] = consumer
    async with app[SUPERVISOR].running(
        lease.child(),
        # The process exists for this loop, and a fresh process that rejoins the group
        # is the cleanest recovery: nothing half-done in memory, partitions reassigned,
        # checkpoints resumed (run under a process supervisor, as scripts/run.py does).
        Child("consumer", consumer.run, Policy.STOP_PROCESS),
        # Through the cluster client on a cluster: a node answers MOVED for keys it does
        # not serve, which would end the reporter.
        reporter(timelines, "fanout", app[OPS].node, snapshotter(consumer, metrics)),
    ):
        yield
    await kafka_consumer.stop()  # leaves the group at once: partitions move without waiting
    await lease.release()
    if timelines is not app[REDIS]:
        await timelines.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[OPS] = Ops("fanout", node_name("fanout", settings.fanout_port))
    app[SUPERVISOR] = Supervisor(app[OPS])
    app.cleanup_ctx.extend([postgres_ctx(), replica_ctx(), redis_ctx(), producer_ctx(), fanout_ctx])
    add_ops_routes(app)
    return app


def main() -> None:
    run("fanout", create_app, lambda s: s.fanout_port)
