"""The ops dashboard's backend: /v1/ops/stats only for the operator token, and what it
shows is what real gateway, fan-out and server processes report (their one-second stats
keys in Redis), ranked feed pages and fallbacks with their cause included; a node that
stops reporting disappears once its key expires."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from core import keys, stats
from core.service import OPS
from core.settings import Settings
from tests.support.api import MakeClient, error_of, follow, post, sign_up
from tests.support.api_server import serve_api
from tests.support.ops import node, operator_auth, ops_stats, wait_for_stats
from tests.support.system import running_system
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


async def test_stats_refuse_anyone_without_the_operator_token(
    api: Client, settings: Settings
) -> None:
    user = await sign_up(api)
    refused = [
        ({}, "unauthorized"),
        (user.auth, "invalid_token"),  # a valid user token is not an operator token
        ({"Authorization": "Bearer not-the-operator-token"}, "invalid_token"),
        ({"Authorization": f"Bearer {settings.operator_token}x"}, "invalid_token"),
        ({"Authorization": f"Basic {settings.operator_token}"}, "invalid_token"),
        ({"Authorization": "Bearer"}, "invalid_token"),
    ]
    for headers, code in refused:
        resp = await api.get("/v1/ops/stats", headers=headers)
        assert resp.status == 401, (headers, await resp.text())
        assert (await error_of(resp))["code"] == code
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    # And the operator token is not a user token anywhere else.
    resp = await api.get("/v1/feed", headers=operator_auth(settings))
    assert resp.status == 401

    resp = await api.get("/v1/ops/stats", headers=operator_auth(settings))
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"server_time_ms", "services", "totals", "redis"}
    assert body["redis"]["cluster"] is False
    assert [(n["slots"], n["up"]) for n in body["redis"]["nodes"]] == [(16_384, True)]
    assert set(body["services"]) == set(body["totals"]) == {"gateway", "fanout", "push", "server"}


async def test_the_page_is_public_and_asks_for_the_token(api: Client) -> None:
    resp = await api.get("/ops")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert '<label for="token">Operator token</label>' in page
    for asset in ("/static/ops.js", "/static/ops.css"):
        assert asset in page
        assert (await api.get(asset)).status == 200


async def test_a_node_that_stops_reporting_disappears_and_push_outcomes_add_up(
    api: Client, settings: Settings, redis_client: aioredis.Redis
) -> None:
    name = f"test-push-{uuid.uuid4().hex[:8]}"
    outcomes = {"apns:sent:": 5, "apns:failed:BadDeviceToken": 2, "webpush:invalid:410": 1}
    reporter = asyncio.create_task(
        stats.report_forever(redis_client, "push", name, lambda: {"outcomes": outcomes, "queue": 3})
    )
    try:
        body: dict[str, object] = {}
        for _ in range(100):
            body = await ops_stats_in_process(api, settings)
            if node(body, "push", name):
                break
            await asyncio.sleep(0.1)
        reported = node(body, "push", name)
        assert reported is not None, body
        assert reported["outcomes"] == outcomes and reported["queue"] == 3
        totals = body["totals"]["push"]  # type: ignore[index]
        assert totals["by_provider"]["apns"]["sent"] >= 5
        assert totals["by_provider"]["apns"]["failed"] >= 2
        assert totals["by_provider"]["webpush"]["invalid"] >= 1
        assert totals["outcomes"]["apns:failed:BadDeviceToken"] >= 2
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter

    # It stopped reporting: once its key's TTL runs out, it is no longer listed.
    key = keys.node_stats("push", name)
    for _ in range(int(stats.STATS_TTL * 10) + 50):
        if not await redis_client.exists(key):
            break
        await asyncio.sleep(0.1)
    body = await ops_stats_in_process(api, settings)
    assert node(body, "push", name) is None


async def test_nodes_are_found_from_the_index_without_a_scan(
    api: Client, settings: Settings, redis_client: aioredis.Redis
) -> None:
    """A SCAN for the stats keys walks every key in Redis (millions of timelines in a
    real deployment) on each dashboard refresh; the nodes come from their index."""
    live, silent = (f"test-idx-{uuid.uuid4().hex[:8]}" for _ in range(2))
    index = keys.node_stats_index("push")
    reporter = asyncio.create_task(
        stats.report_forever(redis_client, "push", live, lambda: {"queue": 7})
    )
    try:
        # A node that stopped reporting before the TTL: its key is gone, its entry stale.
        stale = int(time.time() * 1000) - stats.STATS_TTL * 1000 - 1
        await redis_client.zadd(index, {silent: stale})

        async def indexed() -> bool:
            return await redis_client.zscore(index, live) is not None

        await eventually(indexed, seconds=10, what="the live node in the index")
        scans = await _scan_calls(redis_client)

        body = await ops_stats_in_process(api, settings)

        assert await _scan_calls(redis_client) == scans
        reported = node(body, "push", live)
        assert reported is not None and reported["queue"] == 7, body
        assert node(body, "push", silent) is None
        assert await redis_client.zscore(index, silent) is None  # pruned by the read
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter


async def _scan_calls(client: aioredis.Redis) -> int:
    found = await client.info("commandstats")
    return int(found.get("cmdstat_scan", {}).get("calls", 0))


async def ops_stats_in_process(api: Client, settings: Settings) -> dict[str, object]:
    resp = await api.get("/v1/ops/stats", headers=operator_auth(settings))
    assert resp.status == 200, await resp.text()
    body: dict[str, object] = await resp.json()
    return body


async def test_ranked_pages_and_a_fallback_with_its_cause_reach_the_stats(
    settings: Settings, aiohttp_client: MakeClient
) -> None:
    """Two real API servers on the test stack: one ranks (a first page, then a later page
    from its snapshot), one has no model and serves the chronological page instead. The
    stats say which node did what, why the fallback happened, and how long ranking took."""
    # A generous budget: this is about what is counted, not this noisy machine's speed.
    ranking = dataclasses.replace(settings, ranking_budget_ms=5000)
    api = await aiohttp_client(serve_api(ranking))
    # Its own node name: in one process, a node is named by its port setting (which the
    # test server does not bind) and the pid.
    without = dataclasses.replace(
        ranking, ranking_model_path="/nonexistent/model.json", server_port=ranking.server_port + 1
    )
    no_model = await aiohttp_client(serve_api(without))
    reader, author = await sign_up(api), await sign_up(api)
    await follow(api, reader, author)
    for i in range(3):
        await post(api, author, f"ranked ops {i}")

    async def feed(client: Client, **params: str) -> dict[str, Any]:
        query = {"algorithm": "ranked", "limit": "2"} | params
        resp = await client.get("/v1/feed", params=query, headers=reader.auth)
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    first = await feed(api)
    assert first["algorithm"] == "ranked" and first["next_cursor"], first
    assert (await feed(api, cursor=first["next_cursor"]))["algorithm"] == "ranked"
    fallback = await feed(no_model)
    assert fallback["algorithm"] == "chronological" and len(fallback["posts"]) == 2

    ranked_node, fallback_node = api.app[OPS].node, no_model.app[OPS].node
    body: dict[str, Any] = {}

    async def reported() -> bool:
        # Each node reports once a second: poll until both reports carry the pages.
        nonlocal body
        body = await ops_stats_in_process(api, settings)
        ranked, plain = node(body, "server", ranked_node), node(body, "server", fallback_node)
        return bool(
            ranked
            and plain
            and ranked.get("ranked_later_pages_total") == 1
            and ranked.get("ranker_recent")
            and plain.get("ranked_fallbacks")
        )

    try:
        await eventually(reported, what="both servers' ranked pages in /v1/ops/stats")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last stats: {body}") from None
    ranked, plain = node(body, "server", ranked_node), node(body, "server", fallback_node)
    assert ranked is not None and plain is not None
    assert ranked["ranked_first_pages_total"] == 1
    assert ranked["ranked_fallbacks"] == {}
    assert ranked["ranker_recent"] == 1  # first pages are ranked (and timed); later are not
    assert 0 < ranked["ranker_p50_ms"] <= ranked["ranker_p99_ms"]
    assert plain["ranked_fallbacks"] == {"no_model": 1}
    assert plain["ranked_first_pages_total"] == plain["ranked_later_pages_total"] == 0
    # Without a model nothing was ranked, so nothing was timed.
    assert plain["ranker_recent"] == 0 and plain["ranker_p50_ms"] is None
    # Totals add up over every live server (other tests' servers may be reporting too).
    totals = body["totals"]["server"]
    assert totals["ranked_first_pages_total"] >= 1
    assert totals["ranked_later_pages_total"] >= 1
    assert totals["ranked_fallbacks"]["no_model"] >= 1
    assert totals["ranked_fallback_total"] == sum(totals["ranked_fallbacks"].values())
    assert totals["ranker_p99_ms"] >= ranked["ranker_p99_ms"]  # the slowest node's


@pytest.mark.slow
async def test_real_processes_report_connections_fanout_and_feed_reads(
    settings: Settings,
) -> None:
    host = socket.gethostname()
    async with running_system(settings) as system, aiohttp.ClientSession() as http:
        api = system.api_url
        gateway = system.services["gateway"]
        gateway_node = f"{host}:gateway:{gateway.port}:{gateway.proc.pid}"
        fanout_node = f"{host}:fanout:{system.services['fanout'].port}"
        server = system.services["server"]
        server_node = f"{host}:server:{server.port}:{server.proc.pid}"

        async def signed_up() -> tuple[str, dict[str, str]]:
            handle = f"ops_{uuid.uuid4().hex[:10]}"
            body = {"handle": handle, "password": "correct horse"}
            async with http.post(f"{api}/v1/users", json=body) as resp:
                assert resp.status == 201, await resp.text()
                user = await resp.json()
            return user["user_id"], {"Authorization": f"Bearer {user['token']}"}

        alice_id, alice = await signed_up()
        _, bob = await signed_up()
        async with http.post(f"{api}/v1/users/{alice_id}/follow", headers=bob) as resp:
            assert resp.status == 200

        # Fan-out starts at the newest events: wait until it holds its partitions.
        await wait_for_stats(
            http,
            api,
            settings,
            lambda s: bool((node(s, "fanout", fanout_node) or {}).get("partitions")),
            "fan-out worker with assigned partitions",
        )
        before = await ops_stats(http, api, settings)
        assert node(before, "gateway", gateway_node)["connections_websocket"] == 0  # type: ignore[index]

        stream = gateway.url.replace("http://", "ws://") + "/v1/stream"
        async with http.ws_connect(stream, headers=bob) as ws:
            seen = await wait_for_stats(
                http,
                api,
                settings,
                lambda s: (
                    (node(s, "gateway", gateway_node) or {}).get("connections_websocket") == 1
                ),
                "the gateway node's WebSocket connection",
            )
            gw = node(seen, "gateway", gateway_node)
            assert gw is not None and gw["users"] == 1 and gw["connections_sse"] == 0
            assert seen["totals"]["gateway"]["users_online"] >= 1
            assert seen["totals"]["gateway"]["connections_websocket"] >= 1

            # Bob's first read builds his timeline (a miss); fan-out then writes into it.
            async with http.get(f"{api}/v1/feed", headers=bob) as resp:
                assert resp.status == 200
            for i in range(3):
                async with http.post(
                    f"{api}/v1/posts", json={"text": f"ops {i}"}, headers=alice
                ) as resp:
                    assert resp.status == 201, await resp.text()
            for _ in range(3):
                await ws.receive_json(timeout=30)  # delivered live

            fanned = await wait_for_stats(
                http,
                api,
                settings,
                lambda s: (
                    (node(s, "fanout", fanout_node) or {}).get("posts_total", 0) >= 3
                    and (node(s, "fanout", fanout_node) or {}).get("timeline_writes_total", 0) >= 3
                ),
                "fan-out of 3 posts",
            )
            fo = node(fanned, "fanout", fanout_node)
            assert fo is not None
            assert fo["post_to_timeline_p50_ms"] is not None
            assert fo["post_to_timeline_p99_ms"] >= fo["post_to_timeline_p50_ms"]
            assert fo["batches_total"] >= 1 and fo["dead_letters_total"] == 0
            assert fo["lag_total"] == sum(fo["lag"].values())
            assert set(fo["lag"]) <= set(fo["partitions"])
            assert fanned["totals"]["fanout"]["timeline_writes_total"] >= 3

            delivered = await wait_for_stats(
                http,
                api,
                settings,
                lambda s: (node(s, "gateway", gateway_node) or {}).get("delivered_total", 0) >= 3,
                "3 events delivered by the gateway",
            )
            assert delivered["totals"]["gateway"]["delivered_total"] >= 3

            for _ in range(5):
                async with http.get(f"{api}/v1/feed", headers=bob) as resp:
                    assert resp.status == 200
            read = await wait_for_stats(
                http,
                api,
                settings,
                lambda s: (node(s, "server", server_node) or {}).get("feed_reads_recent", 0) >= 6,
                "6 feed reads in the server's window",
            )
            sv = node(read, "server", server_node)
            assert sv is not None
            assert 0 < sv["feed_read_p50_ms"] <= sv["feed_read_p99_ms"]
            assert sv["timeline_cache_misses_total"] >= 1  # the first read rebuilt it
            assert sv["timeline_cache_hits_total"] >= 5
            assert sv["requests_total"] >= 10
            assert 0 < read["totals"]["server"]["timeline_cache_hit_rate"] < 1

        await wait_for_stats(
            http,
            api,
            settings,
            lambda s: (node(s, "gateway", gateway_node) or {}).get("connections_websocket") == 0,
            "the WebSocket closed",
        )

        # A node that stops reporting is gone once its key expires.
        gateway.stop()
        await wait_for_stats(
            http,
            api,
            settings,
            lambda s: node(s, "gateway", gateway_node) is None,
            "the stopped gateway node to disappear",
        )
