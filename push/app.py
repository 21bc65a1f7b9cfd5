"""Builds the push worker process: Postgres (devices), Redis (presence, coalescing) and
Kafka (push jobs) are required. Its HTTP port serves only health and metrics."""

from __future__ import annotations

from aiohttp import web

from core.resources import postgres_ctx, producer_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[OPS] = Ops("push", node_name("push", settings.push_port))
    app.cleanup_ctx.extend([postgres_ctx(), redis_ctx(), producer_ctx()])
    add_ops_routes(app)
    return app


def main() -> None:
    run("push", create_app, lambda s: s.push_port)
