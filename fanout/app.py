"""Builds the fan-out worker process: Postgres (followers), Redis (timelines) and Kafka
(events in, push jobs and dead letters out) are all required. Its HTTP port serves only
health and metrics."""

from __future__ import annotations

from aiohttp import web

from core.resources import postgres_ctx, producer_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[OPS] = Ops("fanout", node_name("fanout", settings.fanout_port))
    app.cleanup_ctx.extend([postgres_ctx(), redis_ctx(), producer_ctx()])
    add_ops_routes(app)
    return app


def main() -> None:
    run("fanout", create_app, lambda s: s.fanout_port)
