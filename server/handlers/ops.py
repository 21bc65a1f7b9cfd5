"""The ops dashboard's backend: GET /ops (the page) and GET /v1/ops/stats (every live node
of every service, from the one-second `stats:<service>:<node>` keys, plus totals).

The page itself holds no data and is public (a browser cannot send a bearer header when
navigating); everything under /v1/ops/ needs the operator token, never a user token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from core.clients import AnyRedis
from core.resources import REDIS
from core.service import SETTINGS
from core.stats import live_snapshots, redis_nodes
from server.feed.hydrate import REDIS_ERRORS
from server.http.errors import ApiError
from server.http.service_json import json
from web import STATIC_DIR

OPERATOR_PREFIX = "/v1/ops/"
SERVICES = ("gateway", "fanout", "push", "server")
Node = dict[str, Any]


def require_operator(request: web.Request) -> None:
    """401 in the API's error shape unless `Authorization: Bearer <operator token>`."""
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(
            401,
            "unauthorized",
            "operator token required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = header.partition(" ")
    expected = request.app[SETTINGS].operator_token.encode()
    # Constant time, so the token cannot be guessed byte by byte from response times.
    # aiohttp hands undecodable header bytes over as surrogates: "surrogateescape" gives
    # the bytes back (which then simply do not match) instead of raising.
    given = token.strip().encode(errors="surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
        raise ApiError(
            401,
            "invalid_token",
            "not the operator token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "ops.html", headers={"Cache-Control": "no-cache"})


async def read_nodes(client: AnyRedis, service: str) -> list[Node]:
    """Every live node's latest snapshot (core.stats.live_snapshots), named after its
    index entry when the snapshot does not carry its own name; one that is not a JSON
    object is skipped."""
    nodes: list[Node] = []
    for name, raw in await live_snapshots(client, service):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict):
            body.setdefault("node", name)
            nodes.append(body)
    return sorted(nodes, key=lambda n: str(n["node"]))


def _sum(nodes: Iterable[Node], field: str) -> int:
    return sum(int(n.get(field) or 0) for n in nodes)


def _worst(nodes: Iterable[Node], field: str) -> float | None:
    """Percentiles of several nodes cannot be merged; the slowest node's is shown."""
    values = [float(n[field]) for n in nodes if isinstance(n.get(field), int | float)]
    return max(values) if values else None


def gateway_totals(nodes: list[Node]) -> dict[str, Any]:
    websocket, sse = _sum(nodes, "connections_websocket"), _sum(nodes, "connections_sse")
    return {
        "nodes": len(nodes),
        "users_online": _sum(nodes, "users"),
        "connections": websocket + sse,
        "connections_websocket": websocket,
        "connections_sse": sse,
        "delivered_total": _sum(nodes, "delivered_total"),
        "slow_disconnects_total": _sum(nodes, "slow_disconnects_total"),
        "latency_p50_ms": _worst(nodes, "latency_p50_ms"),
        "latency_p99_ms": _worst(nodes, "latency_p99_ms"),
    }


def fanout_totals(nodes: list[Node]) -> dict[str, Any]:
    return {
        "nodes": len(nodes),
        "lag_total": _sum(nodes, "lag_total"),
        "timeline_writes_total": _sum(nodes, "timeline_writes_total"),
        "batches_total": _sum(nodes, "batches_total"),
        "posts_total": _sum(nodes, "posts_total"),
        "dead_letters_total": _sum(nodes, "dead_letters_total"),
        "post_to_timeline_p50_ms": _worst(nodes, "post_to_timeline_p50_ms"),
        "post_to_timeline_p99_ms": _worst(nodes, "post_to_timeline_p99_ms"),
    }


def push_totals(nodes: list[Node]) -> dict[str, Any]:
    """Outcomes are `provider:result:reason` -> count; also grouped by provider/result."""
    outcomes: dict[str, int] = {}
    by_provider: dict[str, dict[str, int]] = {}
    for node in nodes:
        raw = node.get("outcomes")
        if not isinstance(raw, dict):
            continue
        for outcome, n in raw.items():
            if not isinstance(n, int):
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            provider, _, rest = str(outcome).partition(":")
            result = rest.partition(":")[0] or "unknown"
            results = by_provider.setdefault(provider, {})
            results[result] = results.get(result, 0) + n
    return {
        "nodes": len(nodes),
        "queue": _sum(nodes, "queue"),
        "outcomes": dict(sorted(outcomes.items())),
        "by_provider": dict(sorted(by_provider.items())),
    }


def server_totals(nodes: list[Node]) -> dict[str, Any]:
    hits = _sum(nodes, "timeline_cache_hits_total")
    misses = _sum(nodes, "timeline_cache_misses_total")
    return {
        "nodes": len(nodes),
        "requests_total": _sum(nodes, "requests_total"),
        "timeline_cache_hits_total": hits,
        "timeline_cache_misses_total": misses,
        "timeline_cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "feed_read_p50_ms": _worst(nodes, "feed_read_p50_ms"),
        "feed_read_p99_ms": _worst(nodes, "feed_read_p99_ms"),
        **ranked_totals(nodes),
    }


def ranked_totals(nodes: list[Node]) -> dict[str, Any]:
    """Ranked feed pages: served ranked (first pages ranked now, later pages from their
    snapshot) or chronological instead, by cause (`ranked_fallbacks`, cause -> count)."""
    fallbacks: dict[str, int] = {}
    for node in nodes:
        raw = node.get("ranked_fallbacks")
        if not isinstance(raw, dict):
            continue
        for cause, n in raw.items():
            if isinstance(n, int):
                fallbacks[str(cause)] = fallbacks.get(str(cause), 0) + n
    return {
        "ranked_first_pages_total": _sum(nodes, "ranked_first_pages_total"),
        "ranked_later_pages_total": _sum(nodes, "ranked_later_pages_total"),
        "ranked_fallback_total": sum(fallbacks.values()),
        "ranked_fallbacks": dict(sorted(fallbacks.items())),
        "ranker_p50_ms": _worst(nodes, "ranker_p50_ms"),
        "ranker_p99_ms": _worst(nodes, "ranker_p99_ms"),
    }


TOTALS = {
    "gateway": gateway_totals,
    "fanout": fanout_totals,
    "push": push_totals,
    "server": server_totals,
}


async def stats(request: web.Request) -> web.Response:
    client = request.app[REDIS]
    try:
        services = {service: await read_nodes(client, service) for service in SERVICES}
        topology = await redis_nodes(client)
    except REDIS_ERRORS:
        # The stats live in Redis: without it there is nothing to show, which is not the
        # caller's fault. Say so plainly; the dashboard keeps its history and retries.
        raise ApiError(503, "stats_unavailable", "Redis is unreachable; retry") from None
    return json(
        {
            "server_time_ms": int(time.time() * 1000),
            "services": services,
            "totals": {service: TOTALS[service](nodes) for service, nodes in services.items()},
            "redis": topology,
        },
    )
