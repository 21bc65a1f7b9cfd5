"""Builds the API server application. Postgres is required to start; Redis and Kafka are
not (the feed falls back to Postgres, and posts wait in the outbox until Kafka returns).
"""

from __future__ import annotations

from aiohttp import web

from core.resources import kafka_link_ctx, postgres_ctx, redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings
from web import STATIC_DIR


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[OPS] = Ops("server", node_name("server", settings.server_port))
    app.cleanup_ctx.extend([postgres_ctx(), redis_ctx(critical=False), kafka_link_ctx()])
    add_ops_routes(app)
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC_DIR)
    return app


def main() -> None:
    run("server", create_app, lambda s: s.server_port)
