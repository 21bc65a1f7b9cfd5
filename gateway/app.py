"""Builds a gateway process: live WebSocket and SSE connections relaying per-user Redis
pub/sub. Several processes share one port (SO_REUSEPORT), one per core."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from core.resources import DB, REDIS, postgres_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run, stop_tasks
from core.settings import Settings
from gateway.handlers import NODE, sse, websocket
from gateway.metrics import GatewayMetrics
from gateway.node import GatewayNode
from gateway.resume import Resumer


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    node = GatewayNode(
        settings,
        app[OPS].node,
        app[REDIS],
        app[DB],
        Resumer(session, settings.gateway_api_url),
        GatewayMetrics.create(app[OPS].registry),
    )
    await node.broker.start()
    app[NODE] = node
    tasks = [
        asyncio.create_task(node.broker.run_reader(), name="pubsub-reader"),
        asyncio.create_task(node.broker.run_subscriptions(), name="pubsub-subscriptions"),
        asyncio.create_task(node.presence.keep_fresh(node.hub.user_ids), name="presence"),
        asyncio.create_task(node.report_stats(), name="stats"),
    ]
    yield
    await stop_tasks(tasks)
    await node.broker.close()
    await session.close()


async def on_shutdown(app: web.Application) -> None:
    await app[NODE].shutdown(wait=app[SETTINGS].shutdown_timeout / 2)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=16 * 1024)
    app[SETTINGS] = settings
    app[OPS] = Ops("gateway", f"{node_name('gateway', settings.gateway_port)}:{os.getpid()}")
    app.cleanup_ctx.extend([redis_ctx(), postgres_ctx(), gateway_ctx])
    app.on_shutdown.append(on_shutdown)
    add_ops_routes(app)
    app.router.add_get("/v1/stream", websocket)
    app.router.add_get("/v1/stream/sse", sse)
    return app


def main() -> None:
    run("gateway", create_app, lambda s: s.gateway_port, reuse_port=True)
