"""The API server's one middleware: authentication, the JSON error shape, request
metrics and the dashboard's feed latency, in one coroutine per request (four
middlewares cost four more frames and a response check each, on a path that serves
thousands of feed reads a second).

The feed's fast path (server/http/fast_feed.py) answers most GET /v1/feed requests before aiohttp
sees them; it authorizes with the same function (server/auth.verified_user), shapes
errors with the same one (server/errors.failure) and observes with this module's
`observe`, so what is added to those is added to both paths."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.auth import authenticate
from server.http.errors import CLIENT_GONE, response_for
from server.metrics import METRICS
from server.stats import SERVER_STATS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FEED_ROUTE = "/v1/feed"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        authenticate(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect, not an error
            _record(request, exc.status, started)
            raise
        response = response_for(request, exc)
    except asyncio.CancelledError:
        _record(request, CLIENT_GONE, started)
        raise
    except OSError as exc:
        # aiohttp's static files look the name up on disk: a name the filesystem refuses
        # (too long, say) names no file there. Anything else is a 500, logged.
        static = isinstance(request.match_info.route.resource, web.StaticResource)
        response = response_for(request, web.HTTPNotFound() if static else exc)
    except Exception as exc:  # noqa: BLE001 - the last resort: response_for logs it (500)
        response = response_for(request, exc)
    _record(request, response.status, started)
    return response


def _record(request: web.Request, status: int, started: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    observe(request.app, request.method, route, status, time.perf_counter() - started)


def observe(app: web.Application, method: str, route: str, status: int, seconds: float) -> None:
    """What every answered request leaves behind, on either path (this middleware, or
    server/http/fast_feed.py's fast path for GET /v1/feed): its metrics, and for a successful feed
    read the dashboard's latency (refusals would flatter it)."""
    app[METRICS].record(method, route, status, seconds)
    if status < 300 and route == FEED_ROUTE and method == "GET":
        app[SERVER_STATS].feed_reads.add(seconds * 1000)
