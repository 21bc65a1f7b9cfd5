"""Builds the push worker process: Postgres (devices, VAPID keys), Redis (presence,
coalescing) and Kafka (push jobs) are required; APNs and FCM are optional (no key
configured: their devices are skipped and counted). Its HTTP port serves only health
and metrics."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from core import stats, vapid
from core.clients import build_consumer
from core.resources import DB, REDIS, postgres_ctx, producer_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings
from core.supervision import SUPERVISOR, Child, Policy, Supervisor
from core.topics import Topics
from push.channels import apns_channel, fcm_channel, webpush_channel
from push.consumer import PushConsumer
from push.dispatcher import Channel, Dispatcher
from push.metrics import PushMetrics
from push.providers.apns import ApnsSender
from push.providers.fcm import FcmSender
from push.providers.webpush import WebPushSender

log = logging.getLogger(__name__)
CONSUMER = web.AppKey("push_consumer", PushConsumer)


async def push_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, ops = app[SETTINGS], app[OPS]
    metrics = PushMetrics.create(ops.registry)
    keys = await vapid.load_or_create(app[DB])
    webpush = WebPushSender.from_settings(settings, keys.private_pem)
    apns = ApnsSender.from_settings(settings)
    channels: dict[str, Channel] = {"webpush": webpush_channel(webpush)}
    if apns is not None:
        channels["apns"] = apns_channel(apns)
    else:
        log.warning("APNS_KEY/APNS_KEY_FILE not set: APNs devices will not be pushed to")
    fcm = FcmSender.from_settings(settings)
    if fcm is not None:
        channels["fcm"] = fcm_channel(fcm)
    else:
        log.warning("FCM_CREDENTIALS/_FILE not set: Android devices will not be pushed to")
    dispatcher = Dispatcher(settings, app[DB], app[REDIS], channels, metrics)
    kafka_consumer = build_consumer(
        settings,
        settings.push_group,
        client_id=f"push-{os.getpid()}",
        auto_offset_reset=settings.push_offset_reset,
    )
    await kafka_consumer.start()
    consumer = PushConsumer(
        kafka_consumer,
        Topics.for_settings(settings).push,
        dispatcher,
        metrics,
        settings.push_concurrency,
    )
    app[CONSUMER] = consumer

    def snapshot() -> stats.Snapshot:
        return {
            "outcomes": dict(metrics.outcome_tally),
            "skipped": dict(metrics.skipped_tally),
            "queue": consumer.in_flight,
        }

    async with app[SUPERVISOR].running(
        # As fan-out's: the process exists for this loop; a fresh one rejoins the group.
        Child("consumer", consumer.run, Policy.STOP_PROCESS),
        stats.reporter(app[REDIS], "push", ops.node, snapshot),
    ):
        yield
    await kafka_consumer.stop()  # leaves the group at once: partitions move without waiting
    await webpush.close()
    if apns is not None:
        await apns.close()
    if fcm is not None:
        await fcm.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[OPS] = Ops("push", node_name("push", settings.push_port))
    app[SUPERVISOR] = Supervisor(app[OPS])
    # The producer is unused by the work itself; it gives /readyz its Kafka probe.
    app.cleanup_ctx.extend([postgres_ctx(), redis_ctx(), producer_ctx(), push_ctx])
    add_ops_routes(app)
    return app


def main() -> None:
    run("push", create_app, lambda s: s.push_port)
