"""Builds the API server application. Postgres is required to start; Redis and Kafka are
not (the feed falls back to Postgres, and posts wait in the outbox until Kafka returns).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from core import vapid
from core.auth import TokenSigner
from core.ids import IdLease
from core.replica import READS, replica_ctx
from core.resources import DB, KAFKA_LINK, REDIS, kafka_link_ctx, postgres_ctx, redis_ctx
from core.service import (
    OPS,
    SETTINGS,
    Ops,
    add_ops_routes,
    node_name,
    quiet_gc,
    run,
)
from core.settings import Settings
from core.supervision import SUPERVISOR, Child, Supervisor
from core.tiers import TierPolicy
from core.topics import Topics
from server import auth
from server.context import CTX, ServerContext
from server.feed.home import FEED, Celebrities, HomeFeed
from server.feed.ranked import RANKED, RankedFeed
from server.handlers import devices, home, media, ops, posts, users
from server.http.errors import ApiError
from server.http.fast_feed import FrontRunner
from server.http.middleware import api_middleware
from server.http.openapi import openapi
from server.metrics import METRICS, ServerMetrics
from server.outbox import Outbox, OutboxRelay
from server.stats import SERVER_STATS, ServerStats, stats_ctx
from web import STATIC_DIR

MAX_BODY = 16 * 1024  # a post is 280 characters; nothing we accept needs more
OUTBOX_RELAY = web.AppKey("outbox_relay", OutboxRelay)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def service_worker(request: web.Request) -> web.FileResponse:
    """The web client's service worker, at the root so its scope is the whole site."""
    return web.FileResponse(
        STATIC_DIR / "sw.js",
        headers={"Content-Type": "text/javascript", "Cache-Control": "no-cache"},
    )


async def client_config(request: web.Request) -> web.Response:
    """Where the web client finds the gateway: PUBLIC_STREAM_URL, else the page's host on
    GATEWAY_PORT."""
    settings = request.app[SETTINGS]
    url = settings.public_stream_url.rstrip("/")
    if not url:
        try:
            url = str(request.url.with_port(settings.gateway_port).origin())
        except ValueError:  # yarl cannot build a URL on this Host header (idna errors too)
            raise ApiError(400, "invalid_host", "the Host header is not a host[:port]") from None
    return web.json_response({"stream_url": url})


async def server_ctx(app: web.Application) -> AsyncIterator[None]:
    """Per-process state built on the clients: id lease (renewed by a supervised task),
    handler context, outbox relay (a supervised task)."""
    settings = app[SETTINGS]
    lease = IdLease(app[DB], holder=f"{socket.gethostname()}:server:{os.getpid()}")
    ids = await lease.acquire()
    hasher = auth.build_hasher()
    c = ServerContext(
        settings=settings,
        db=app[DB],
        reads=app[READS],
        redis=app[REDIS],
        kafka=app[KAFKA_LINK],
        ids=ids,
        signer=TokenSigner(settings.secret_key, settings.token_ttl_seconds),
        hasher=hasher,
        dummy_hash=await asyncio.to_thread(hasher.hash, "unknown-user-placeholder"),
        topics=Topics.for_settings(settings),
        outbox=Outbox(settings.kafka_topic_prefix),
        vapid_public_key=(await vapid.load_or_create(app[DB])).public_key,
    )
    app[CTX] = c
    metrics = app[METRICS]
    celebs = Celebrities(c.db, TierPolicy(settings, c.redis))
    app[FEED] = HomeFeed(c, celebs, metrics.timeline_reads, metrics.feed_pages_general)
    app[RANKED] = RankedFeed(c, app[FEED], metrics)
    relay = OutboxRelay(settings.database_url, c.kafka, c.outbox, metrics.outbox_published)
    app[OUTBOX_RELAY] = relay
    # The relay restarts in place: its rows wait in Postgres, and a relay that merely
    # waits for another server's lock is running, not down. Its own loop retries what
    # it expects (Postgres, Kafka away); anything else ends it and is restarted here.
    children = [lease.child(), Child("outbox-relay", relay.run)]
    impressions = app[RANKED].impressions
    if impressions is not None:
        children.append(Child("ranking-impressions", impressions.run))
    async with app[SUPERVISOR].running(*children):
        yield
    await app[FEED].close()
    await lease.release()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/users", auth.sign_up)
    r.add_post("/v1/sessions", auth.sign_in)
    r.add_get("/v1/users/{handle}", users.profile)
    r.add_get("/v1/users/{handle}/posts", users.profile_posts)
    r.add_get("/v1/users/{handle}/followers", users.followers)
    r.add_get("/v1/users/{handle}/following", users.following)
    r.add_post("/v1/users/{user_id}/follow", users.follow)
    r.add_delete("/v1/users/{user_id}/follow", users.unfollow)
    r.add_post("/v1/posts", posts.create_post)
    r.add_get("/v1/posts/{id}", posts.get_post)
    r.add_delete("/v1/posts/{id}", posts.delete_post)
    r.add_post("/v1/posts/{id}/like", posts.like)
    r.add_delete("/v1/posts/{id}/like", posts.unlike)
    r.add_get("/v1/posts/{id}/replies", posts.replies)
    r.add_get("/v1/feed", home.home)
    r.add_get("/v1/feed/delta", home.delta)
    r.add_get("/v1/search", home.search)
    r.add_get("/v1/notifications", home.notifications)
    r.add_post("/v1/devices", devices.register)
    r.add_get("/v1/devices", devices.list_devices)
    r.add_delete("/v1/devices/{id}", devices.delete_device)
    r.add_get("/v1/push/vapid-public-key", devices.vapid_public_key)
    r.add_post("/v1/media", media.create_media)
    r.add_get("/v1/media/{id}", media.get_media)
    r.add_patch("/v1/media/{id}", media.patch_media)
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/v1/ops/stats", ops.stats)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[api_middleware],
    )
    app[SETTINGS] = settings
    # Several server processes may share the port (SO_REUSEPORT): one stats node each.
    app[OPS] = Ops("server", f"{node_name('server', settings.server_port)}:{os.getpid()}")
    app[SUPERVISOR] = Supervisor(app[OPS])
    app[METRICS] = ServerMetrics.create(app[OPS].registry)
    app[SERVER_STATS] = ServerStats()
    app.cleanup_ctx.extend(
        [
            postgres_ctx(),
            replica_ctx(),
            redis_ctx(critical=False),
            kafka_link_ctx(),
            server_ctx,
            media.media_ctx,
            stats_ctx,
        ]
    )
    add_ops_routes(app)
    add_routes(app)
    app.router.add_get("/", index)
    app.router.add_get("/ops", ops.page)
    app.router.add_get("/sw.js", service_worker)
    app.router.add_get("/client-config.json", client_config)
    app.router.add_static("/static", STATIC_DIR)
    return app


def _create_process_app(settings: Settings) -> web.Application:
    app = create_app(settings)
    quiet_gc(app)
    return app


def main() -> None:
    run(
        "server",
        _create_process_app,
        lambda s: s.server_port,
        reuse_port=True,
        runner_class=FrontRunner,
    )
