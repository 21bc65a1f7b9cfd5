"""Builds the gateway application. Redis is its only dependency (tokens are verified
locally), and several gateway processes share one port (SO_REUSEPORT)."""

from __future__ import annotations

import os

from aiohttp import web

from core.resources import redis_ctx
from core.service import OPS, SETTINGS, Ops, add_ops_routes, node_name, run
from core.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=16 * 1024)
    app[SETTINGS] = settings
    app[OPS] = Ops("gateway", f"{node_name('gateway', settings.gateway_port)}:{os.getpid()}")
    app.cleanup_ctx.append(redis_ctx())
    add_ops_routes(app)
    return app


def main() -> None:
    run("gateway", create_app, lambda s: s.gateway_port, reuse_port=True)
