"""Builds a gateway process: live WebSocket and SSE connections relaying per-user Redis
pub/sub. Several processes share one port (SO_REUSEPORT), one per core. `main` serves
through gateway.protocols.site, so WebSocket upgrades leave aiohttp (protocols/front.py)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from core.clients import connect_with_retry, create_redis_cluster
from core.resources import DB, CleanupCtx, postgres_ctx
from core.service import (
    OPS,
    SETTINGS,
    Check,
    Ops,
    add_ops_routes,
    node_name,
    quiet_gc,
    run,
)
from core.settings import Settings, mask_url
from core.supervision import SUPERVISOR, Supervisor
from gateway.endpoints import NODE, WEBSOCKETS, sse, websocket
from gateway.metrics import GatewayMetrics
from gateway.node import GatewayNode
from gateway.protocols.connections import WebSocketConnections
from gateway.protocols.site import front_site
from gateway.resume import Resumer

# A caller waits at most this long for a pooled Redis connection, then gets an error
# (the pool blocks instead of failing at once with "Too many connections").
REDIS_POOL_WAIT = 2.0
# The node's Redis: one server, or a cluster client (REDIS_CLUSTER=true) for presence,
# tier thresholds and stats; its pub/sub is then sharded (gateway/sharded_broker.py).
GATEWAY_REDIS: web.AppKey[aioredis.Redis | RedisCluster] = web.AppKey("gateway_redis")


def redis_ctx() -> CleanupCtx:
    """The node's Redis client, on a blocking pool: a burst that wants more than
    REDIS_MAX_CONNECTIONS connections waits (bounded by REDIS_POOL_WAIT) instead of
    failing. The node's own use is bounded by design (one writer per purpose)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if settings.redis_cluster:
            cluster = await create_redis_cluster(settings)
            app[GATEWAY_REDIS] = cluster
            app[OPS].checks.append(Check("redis", cluster.ping))
            yield
            await cluster.aclose()
            return
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=REDIS_POOL_WAIT,
            # the rest as core.clients.build_redis
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            retry_on_timeout=False,
        )
        client = aioredis.Redis.from_pool(pool)

        async def ping() -> aioredis.Redis:
            await client.ping()
            return client

        try:
            await connect_with_retry(
                "Redis", mask_url(settings.redis_url), ping, settings.startup_timeout
            )
        except BaseException:
            await client.aclose()
            raise
        app[GATEWAY_REDIS] = client
        app[OPS].checks.append(Check("redis", client.ping))
        yield
        await client.aclose()

    return ctx


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    node = GatewayNode(
        settings,
        app[OPS].node,
        app[GATEWAY_REDIS],
        app[DB],
        Resumer(session, settings.gateway_api_url),
        GatewayMetrics.create(app[OPS].registry),
    )
    await node.broker.start()
    app[NODE] = node
    websockets = WebSocketConnections(node, settings.gateway_ping_seconds)
    websockets.start()
    app[WEBSOCKETS] = websockets
    app[OPS].checks.append(Check("pubsub", node.broker.probe))
    async with app[SUPERVISOR].running(*node.tasks):
        yield
        await websockets.shutdown(wait=0)  # no-op after on_shutdown; else cuts what is left
    await node.presence.clear()
    await node.broker.close()
    await session.close()


async def on_shutdown(app: web.Application) -> None:
    """Every client is told to go (1012), including those upgraded outside aiohttp and
    those still connecting; half the shutdown budget is theirs to finish closing."""
    budget = app[SETTINGS].shutdown_timeout / 2
    started = time.monotonic()
    await app[NODE].shutdown(wait=budget)
    await app[WEBSOCKETS].shutdown(wait=max(budget - (time.monotonic() - started), 0.5))


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=16 * 1024)
    app[SETTINGS] = settings
    app[OPS] = Ops("gateway", f"{node_name('gateway', settings.gateway_port)}:{os.getpid()}")
    app[SUPERVISOR] = Supervisor(app[OPS])
    app.cleanup_ctx.extend([redis_ctx(), postgres_ctx(), gateway_ctx])
    app.on_shutdown.append(on_shutdown)
    add_ops_routes(app)
    # No HEAD: a HEAD answered by a stream handler would open a live connection.
    app.router.add_get("/v1/stream", websocket, allow_head=False)
    app.router.add_get("/v1/stream/sse", sse, allow_head=False)
    return app


def _create_process_app(settings: Settings) -> web.Application:
    app = create_app(settings)
    quiet_gc(app)
    return app


def main() -> None:
    run(
        "gateway",
        _create_process_app,
        lambda s: s.gateway_port,
        reuse_port=True,
        site_factory=front_site,
    )
