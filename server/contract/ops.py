"""What the ops and service routes answer: health, readiness, the dashboard's stats and
the web client's configuration. Only described here: core/service.py and
server/handlers/ops.py build them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from server.contract.fields import Count

CLOSED = ConfigDict(extra="forbid")
# The slowest node's (percentiles of nodes cannot be merged); null without recent samples.
Worst = Annotated[float | None, Field(ge=0)]
Tally = Annotated[int, Field(ge=0)]


@with_config(CLOSED)
class Health(TypedDict):
    status: Literal["ok"]
    service: str
    node: str
    uptime_s: Annotated[float, Field(ge=0)]


@with_config(CLOSED)
class Readiness(TypedDict):
    ready: bool
    checks: Annotated[
        dict[str, str],
        Field(
            description="One entry per dependency: `ok`, `timeout` or `down: <why>`.",
            examples=[{"postgres": "ok", "redis": "ok", "kafka": "ok"}],
        ),
    ]


@with_config(ConfigDict(extra="allow"))
class OpsNode(TypedDict):
    """One live node's latest one-second snapshot (`stats:<service>:<node>` in Redis, 5 s
    TTL: a node that stops reporting disappears). Fields beyond `node` and
    `reported_at_ms` are the service's own; see the README's Ops dashboard section."""

    node: str
    reported_at_ms: Annotated[int, Field(description="Unix time in ms.")]


@with_config(CLOSED)
class OpsServices(TypedDict):
    gateway: list[OpsNode]
    fanout: list[OpsNode]
    push: list[OpsNode]
    server: list[OpsNode]


@with_config(CLOSED)
class GatewayTotals(TypedDict):
    nodes: Count
    users_online: Count
    connections: Count
    connections_websocket: Count
    connections_sse: Count
    delivered_total: Count
    slow_disconnects_total: Count
    latency_p50_ms: Worst
    latency_p99_ms: Worst


@with_config(CLOSED)
class FanoutTotals(TypedDict):
    nodes: Count
    lag_total: Count
    timeline_writes_total: Count
    batches_total: Count
    posts_total: Count
    dead_letters_total: Count
    post_to_timeline_p50_ms: Worst
    post_to_timeline_p99_ms: Worst


@with_config(CLOSED)
class PushTotals(TypedDict):
    nodes: Count
    queue: Count
    outcomes: Annotated[dict[str, Tally], Field(description="`provider:result:reason` -> sends.")]
    by_provider: Annotated[
        dict[str, dict[str, Tally]], Field(description="provider -> result -> sends.")
    ]


@with_config(CLOSED)
class ServerTotals(TypedDict):
    nodes: Count
    requests_total: Count
    timeline_cache_hits_total: Count
    timeline_cache_misses_total: Count
    timeline_cache_hit_rate: Annotated[float | None, Field(ge=0, le=1)]
    feed_read_p50_ms: Worst
    feed_read_p99_ms: Worst
    # The ranked feed (server/stats.py): pages ranked, and chronological pages served
    # instead of ranked ones by cause; the ranker's time over recent first pages.
    ranked_first_pages_total: Count
    ranked_later_pages_total: Count
    ranked_fallback_total: Count
    ranked_fallbacks: Annotated[
        dict[str, Tally],
        Field(
            description="cause -> chronological pages served instead of ranked ones: "
            "`no_model`, `error`, `budget`, `breaker_open`, `no_candidates`."
        ),
    ]
    ranker_p50_ms: Worst
    ranker_p99_ms: Worst


@with_config(CLOSED)
class OpsTotals(TypedDict):
    gateway: GatewayTotals
    fanout: FanoutTotals
    push: PushTotals
    server: ServerTotals


@with_config(CLOSED)
class RedisNode(TypedDict):
    node: Annotated[str, Field(description="host:port")]
    slots: Annotated[int, Field(ge=0, le=16384, description="Hash slots it serves.")]
    keys: Annotated[int | None, Field(ge=0, description="DBSIZE; null when unreachable.")]
    up: bool


@with_config(CLOSED)
class RedisTopology(TypedDict):
    """The Redis behind the API server: one node, or every master of a Redis Cluster
    (REDIS_CLUSTER=true) with its share of the hash slots."""

    cluster: bool
    nodes: list[RedisNode]


@with_config(CLOSED)
class OpsStats(TypedDict):
    server_time_ms: Annotated[int, Field(description="Unix time in ms.")]
    services: OpsServices
    totals: OpsTotals
    redis: RedisTopology


@with_config(CLOSED)
class ClientConfig(TypedDict):
    stream_url: Annotated[str, Field(json_schema_extra={"format": "uri"})]
