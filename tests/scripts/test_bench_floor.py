"""The latency floor beside each feed rate (scripts/bench/floor.py): a server that does no
work must answer the feed's requests, as the feed's load generator sends them, with the
bytes of a real page, or its p99 is no floor for the feed's."""

import argparse
import http.client
import shutil

import pytest

from scripts.bench import floor
from scripts.bench.loadgen import Plan
from tests.support.env import free_port

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")

PAGE = '{"posts":[{"id":"1","text":"שלום 👋🏽"}],"next_cursor":null}'.encode()


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes]:
    conn.request("GET", path, headers={"Authorization": "Bearer x"})
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type", ""), resp.read()


def test_every_request_gets_the_page_bytes_on_a_kept_alive_connection() -> None:
    port = free_port()
    with floor.running_floor(PAGE, port) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for path in ("/v1/feed?limit=20", "/v1/feed?limit=20&cursor=abc", "/anything"):
                assert _get(conn, path) == (200, "application/json", PAGE)
        finally:
            conn.close()
    with pytest.raises(OSError):  # stopped with the context
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")


def test_a_floor_run_sends_the_feed_plans_load_and_reports_it() -> None:
    args = argparse.Namespace(client="go", quiet_below=1000.0, quiet_wait=0.0, db="", redis_port=0)
    plan = Plan(
        base_url="http://127.0.0.1:1",  # the feed server's: the floor run must replace it
        path="/v1/feed?limit=20",
        tokens=["a", "b"],
        rate=200.0,
        warmup=30.0,  # the feed's: the floor has no caches to warm and keeps its own
        duration=1.0,
        connections=4,
    )
    row, tail_lines = floor.measure_floor(args, plan, PAGE)
    assert row.label == floor.LABEL
    assert row.errors == "0"
    assert row.offered == 200.0
    assert 150.0 <= row.achieved <= 250.0
    assert 0.0 < row.p50 <= row.p99 <= row.max
    assert tail_lines  # says either when the slow requests came or that there were none
