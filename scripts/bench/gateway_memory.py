"""Memory per held WebSocket on one gateway process: RSS growth and (in a second run
with tracemalloc) Python heap growth, grouped by package, with N idle connections.

    .venv/bin/python -m scripts.bench.gateway_memory [--connections 10000]
    .venv/bin/python -m scripts.bench.gateway_memory --gateway-root /tmp/before-tree

Each run starts a private Redis and one gateway (`python -m gateway` from
--gateway-root, wrapped by this file's --probe mode, which installs two signal
handlers: SIGUSR1 starts tracemalloc, SIGUSR2 writes what is still allocated since then,
by package). One client process (wsclient_go) opens the connections at a bounded
rate and answers pings; the numbers are read after they have been idle for --settle
seconds. The RSS run does not trace (tracemalloc's own bookkeeping would inflate RSS).
"""

from __future__ import annotations

import argparse
import gc
import os
import runpy
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType

import orjson
import redis

from scripts.bench.common import BenchError
from scripts.bench.cpu import rss_kib
from scripts.bench.gateway_common import (
    PYTHON,
    ROOT,
    SECRET,
    USER_BASE,
    gateway_env,
    loopback_sources,
    private_redis,
)
from scripts.bench.gateway_fleet import Fleet, split_plans
from scripts.bench.progress import note
from scripts.supervise import procs

USER_OFFSET = 3 * 10**6  # our id range, apart from the other gateway benchmarks'
GROUPS = ("aiohttp", "multidict", "yarl", "uvloop", "asyncio", "gateway", "redis", "core")


# -- inside the gateway process ------------------------------------------------------------


def _group(filename: str) -> str:
    parts = Path(filename).parts
    for name in GROUPS:
        if name in parts:
            return name
    return "other"


def _start_tracing(signum: int, frame: FrameType | None) -> None:
    gc.collect()
    tracemalloc.start()


def _write_heap(signum: int, frame: FrameType | None) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    by_group: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        group = _group(stat.traceback[0].filename)
        by_group[group] = by_group.get(group, 0) + stat.size
    top = [
        {"where": str(s.traceback[0]), "bytes": s.size, "blocks": s.count}
        for s in snapshot.statistics("lineno")[:25]
    ]
    out = {"total": sum(by_group.values()), "by_group": by_group, "top": top}
    Path(os.environ["GATEWAY_MEMORY_OUT"]).write_bytes(orjson.dumps(out))


def probe() -> None:
    """Runs `python -m gateway` (from the current directory's tree) with the handlers."""
    signal.signal(signal.SIGUSR1, _start_tracing)
    signal.signal(signal.SIGUSR2, _write_heap)
    sys.argv = ["gateway"]
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)


# -- the benchmark -------------------------------------------------------------------------


def _wait_stats(redis_url: str, pid: int, connections: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(redis_url) as client:
        while time.monotonic() < deadline:
            for key in client.scan_iter(match=f"stats:gateway:*:{pid}"):
                raw = client.get(key)
                if raw and orjson.loads(raw).get("connections_websocket", -1) >= connections:
                    return
            time.sleep(0.2)
    raise BenchError(f"the gateway did not report {connections} connections in {timeout} s")


def one_run(args: argparse.Namespace, trace: bool) -> dict[str, object]:
    children = procs.Children(last=("redis",)).install()
    out = Path(tempfile.mkdtemp(prefix="gateway-memory-")) / "heap.json"
    try:
        with private_redis(children) as redis_url:
            port = procs.free_port()
            env = gateway_env(redis_url, port, gateway_ping_seconds=args.ping_seconds)
            env["GATEWAY_MEMORY_OUT"] = str(out)
            env["PYTHONPATH"] = str(args.gateway_root)
            proc = children.popen(
                "gateway",
                [PYTHON, str(Path(__file__).resolve()), "--probe"],
                cwd=args.gateway_root,
                env=env,
            )
            _wait_stats(redis_url, proc.pid, 0, 60)
            time.sleep(3.0)  # pools, first stats
            if trace:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
            before = rss_kib(proc.pid)
            users = range(USER_BASE + USER_OFFSET, USER_BASE + USER_OFFSET + args.connections)
            plans = split_plans(users, 1, loopback_sources(1), port, SECRET, args.connect_rate, 300)
            fleet = Fleet(plans).start()
            children.on_stop(fleet.stop)
            try:
                fleet.wait_connected(600)
                connected = fleet.total("connected")
                _wait_stats(redis_url, proc.pid, connected, 60)
                time.sleep(args.settle)
                after = rss_kib(proc.pid)
                result: dict[str, object] = {
                    "connections": connected,
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "rss_per_connection_kib": round((after - before) / connected, 2),
                }
                if trace:
                    proc.send_signal(signal.SIGUSR2)
                    deadline = time.monotonic() + 120
                    while not out.exists() and time.monotonic() < deadline:
                        time.sleep(0.5)
                    heap = orjson.loads(out.read_bytes())
                    result["heap_per_connection_kib"] = round(heap["total"] / connected / 1024, 2)
                    result["heap_by_group_per_connection_bytes"] = {
                        k: round(v / connected)
                        for k, v in sorted(heap["by_group"].items(), key=lambda kv: -kv[1])
                    }
                    result["heap_top"] = heap["top"][:15]
            finally:
                fleet.stop()
    finally:
        children.stop_all()
    return result


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--probe"]:
        probe()
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--connect-rate", type=float, default=1_000.0)
    p.add_argument("--ping-seconds", type=float, default=25.0)
    p.add_argument("--settle", type=float, default=30.0, help="idle seconds before reading")
    p.add_argument("--gateway-root", type=Path, default=ROOT, help="tree to run gateway from")
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    try:
        report = {"rss": one_run(args, trace=False), "tracemalloc": one_run(args, trace=True)}
    except BenchError as exc:
        note(f"error: {exc}")
        return 1
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
