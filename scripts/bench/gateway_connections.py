"""Connections held: 100 000 idle WebSockets across several gateway processes sharing one
port (SO_REUSEPORT), with keepalive pings, and what they cost: RSS per connection, idle
CPU, connect rate.

    .venv/bin/python -m scripts.bench.gateway_connections [--connections 100000]

Each process may hold at most 20 000 open files here, so the connections are spread
over --gateways gateway processes and --clients client processes (Go, see
gateway_fleet), each client bound to its own loopback address (127.0.0.2,
...; each has its own ~28 000 ephemeral ports).
Connections open at a bounded rate; then everything stays idle for --idle-seconds (at
least two ping rounds: the gateway pings, clients answer like browsers), then one event
per user checks that every connection is still alive. Everything is stopped at the end,
on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from scripts.bench.common import BenchError
from scripts.bench.cpu import CpuWindow, kernel_tcp, machine_info, rss_kib
from scripts.bench.gateway_common import (
    ROOT,
    SECRET,
    USER_BASE,
    Gateway,
    gateway_env,
    gateway_stats,
    log_summary,
    loopback_sources,
    private_redis,
    redis_pid,
    start_gateways,
)
from scripts.bench.gateway_fleet import CLIENTS, Fleet, PhaseResult, split_plans
from scripts.bench.gateway_publisher import PublishPlan, publisher_main
from scripts.bench.gateway_wsclient import RECEIVED, SLOTS
from scripts.bench.loadgen import default_client
from scripts.bench.progress import note
from scripts.supervise import procs

FD_LIMIT = 20_000
FD_HEADROOM = 1_000  # Redis/Postgres pools, the listening socket, logs
USER_OFFSET = 2 * 10**6  # our id range, apart from gateway_throughput's


@dataclass(slots=True)
class GatewayReport:
    pid: int
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    per_connection_kib: float
    idle_cpu_percent: float


@dataclass(slots=True)
class Report:
    connections_planned: int
    connections_held: int  # the gateways' own count after the idle window
    connect_failures: int
    connect_seconds: float
    connects_per_s: float
    connect_cpu_ms: float  # gateway CPU per connection opened, all processes
    connect_cpu_percent: dict[str, float]  # while connecting, of one core
    lost_during_idle: int
    pings_answered_during_idle: int
    idle_seconds: float
    gateways: list[GatewayReport]
    broadcast_delivered: int
    broadcast_latency_ms: dict[str, float]
    kernel_tcp: str
    gateway_log: dict[str, int]
    client: str  # which WebSocket client held the connections


def check_limits(args: argparse.Namespace) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(soft, FD_LIMIT)
    # SO_REUSEPORT spreads by hash: allow 5% more than an even share per gateway.
    per_gateway = args.connections / args.gateways * 1.05 + FD_HEADROOM
    per_client = args.connections / args.clients + 100
    if per_gateway > limit:
        raise BenchError(f"~{per_gateway:,.0f} fds per gateway > {limit:,}: add --gateways")
    if per_client > limit:
        raise BenchError(f"~{per_client:,.0f} fds per client process > {limit:,}: add --clients")
    if args.connections / args.clients > 25_000:
        raise BenchError("more than 25 000 connections per source address: add --clients")


def held(redis_url: str, gateways: list[Gateway]) -> dict[int, int]:
    stats = gateway_stats(redis_url, gateways)
    return {pid: s["connections_websocket"] for pid, s in stats.items()}


def ramp(fleet: Fleet, redis_url: str, gateways: list[Gateway]) -> float:
    def show(connected: int, failed: int, elapsed: float) -> None:
        on_gateways = sum(held(redis_url, gateways).values())
        rss = sum(rss_kib(g.pid) for g in gateways) / 1024
        note(
            f"connecting: {connected:,}/{fleet.expected:,} open ({connected / elapsed:,.0f}/s), "
            f"{failed:,} failed; gateways report {on_gateways:,}; gateway RSS {rss:,.0f} MiB"
        )

    return fleet.wait_connected(max(600.0, 3 * fleet.expected / 100), show)


def wait_reported(redis_url: str, gateways: list[Gateway], expected: int) -> int:
    """Stats are written once a second: wait until they show every connection."""
    deadline = time.monotonic() + 30
    total = 0
    while time.monotonic() < deadline:
        total = sum(held(redis_url, gateways).values())
        if total >= expected:
            break
        time.sleep(1.0)
    return total


def idle(
    args: argparse.Namespace, fleet: Fleet, gateways: list[Gateway], rpid: int
) -> tuple[CpuWindow, dict[int, int], int, int]:
    """Nothing but keepalive for idle_seconds; returns CPU, RSS after, lost, pings."""
    note(f"idle for {args.idle_seconds:.0f} s (pings every {args.ping_seconds:.0f} s)")
    lost0, pings0 = fleet.total("lost"), fleet.total("pings")
    pids = {f"gateway:{g.pid}": [g.pid] for g in gateways}
    cpu = CpuWindow(pids | {"redis": [rpid], "clients": fleet.pids}).start()
    ends = time.monotonic() + args.idle_seconds
    while (left := ends - time.monotonic()) > 0:
        time.sleep(min(left, 10.0))
        left = max(ends - time.monotonic(), 0.0)
        note(
            f"idle: {fleet.total('pings') - pings0:,} pings answered, "
            f"{fleet.total('lost') - lost0:,} connections lost, {left:.0f} s left"
        )
    cpu.stop()
    rss = {g.pid: rss_kib(g.pid) for g in gateways}
    return cpu, rss, fleet.total("lost") - lost0, fleet.total("pings") - pings0


def broadcast(redis_url: str, fleet: Fleet, users: int, rate: float) -> PhaseResult:
    """One event to every user: proves each held connection still delivers."""
    note(f"broadcast: one event to each of {users:,} users at {rate:,.0f}/s")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    plan = PublishPlan(redis_url, USER_BASE + USER_OFFSET, users, 1, 100)
    proc = ctx.Process(
        target=publisher_main, args=(plan, fleet.counters, len(SLOTS), RECEIVED, child)
    )
    proc.start()
    try:
        target = fleet.total("received") + users
        parent.send(("open", rate, users / rate + 5.0, 1, users))
        parent.recv()
        deadline = time.monotonic() + 30
        while fleet.total("received") < target and time.monotonic() < deadline:
            time.sleep(0.2)
        return fleet.collect().get(1, PhaseResult())
    finally:
        proc.kill()
        proc.join(5)


def run(args: argparse.Namespace, children: procs.Children, log_dir: Path) -> Report:
    with private_redis(children) as redis_url:
        rpid = redis_pid(redis_url)
        port = procs.free_port()
        env = gateway_env(redis_url, port, gateway_ping_seconds=args.ping_seconds)
        note(f"WebSocket clients: {CLIENTS[args.client]}")
        note(f"starting {args.gateways} gateway processes on port {port} (logs: {log_dir})")
        gateways = start_gateways(
            children, args.gateways, env, redis_url, args.gateway_root, log_dir
        )
        time.sleep(3.0)  # settle (pools, first stats) before the baseline
        before = {g.pid: rss_kib(g.pid) for g in gateways}
        users = range(USER_BASE + USER_OFFSET, USER_BASE + USER_OFFSET + args.connections)
        sources = loopback_sources(args.clients)
        plans = split_plans(
            users, args.clients, sources, port, SECRET, args.connect_rate, args.concurrency
        )
        fleet = Fleet(plans, args.client).start()
        children.on_stop(fleet.stop)
        try:
            groups = {"gateways": [g.pid for g in gateways], "clients": fleet.pids}
            ramp_cpu = CpuWindow(groups | {"redis": [rpid]}).start()
            took = ramp(fleet, redis_url, gateways)
            ramp_cpu.stop()
            connected = fleet.total("connected")
            note(f"{connected:,} connected in {took:.1f} s ({connected / took:,.0f}/s)")
            wait_reported(redis_url, gateways, connected)
            cpu, after, lost, pings = idle(args, fleet, gateways, rpid)
            on_gateways = held(redis_url, gateways)
            sent = broadcast(redis_url, fleet, args.connections, args.broadcast_rate)
            tcp = kernel_tcp()
        finally:
            fleet.stop()
        reports = [
            GatewayReport(
                pid=g.pid,
                connections=on_gateways.get(g.pid, 0),
                rss_before_kib=before[g.pid],
                rss_after_kib=after[g.pid],
                per_connection_kib=(after[g.pid] - before[g.pid])
                / max(on_gateways.get(g.pid, 0), 1),
                idle_cpu_percent=cpu.percent(f"gateway:{g.pid}"),
            )
            for g in gateways
        ]
    return Report(
        connections_planned=args.connections,
        connections_held=sum(on_gateways.values()),
        connect_failures=fleet.total("failed"),
        connect_seconds=took,
        connects_per_s=connected / took,
        connect_cpu_ms=1000 * ramp_cpu.used["gateways"] / max(connected, 1),
        connect_cpu_percent={k: ramp_cpu.percent(k) for k in ("gateways", "clients", "redis")}
        | {"others": ramp_cpu.other_percent()},
        lost_during_idle=lost,
        pings_answered_during_idle=pings,
        idle_seconds=cpu.wall,
        gateways=reports,
        broadcast_delivered=sent.count,
        broadcast_latency_ms=sent.latency_ms((50.0, 99.0)),
        kernel_tcp=tcp,
        gateway_log={},
        client=CLIENTS[args.client],
    )


def markdown(r: Report) -> str:
    lines = [
        "| gateway pid | connections | RSS before | RSS after | per connection | idle CPU |",
        "|---|---|---|---|---|---|",
    ]
    for g in r.gateways:
        lines.append(
            f"| {g.pid} | {g.connections:,} | {g.rss_before_kib / 1024:,.1f} MiB "
            f"| {g.rss_after_kib / 1024:,.1f} MiB | {g.per_connection_kib:.1f} KiB "
            f"| {g.idle_cpu_percent:.1f}% |"
        )
    grown = sum(g.rss_after_kib - g.rss_before_kib for g in r.gateways)
    cpu = sum(g.idle_cpu_percent for g in r.gateways)
    lines.append(
        f"| **all** | **{r.connections_held:,}** | | | "
        f"**{grown / max(r.connections_held, 1):.1f} KiB** | **{cpu:.1f}%** |"
    )
    lat = r.broadcast_latency_ms
    lines += [
        "",
        f"- WebSocket clients: {r.client}",
        f"- planned {r.connections_planned:,}, held {r.connections_held:,} (gateways' stats), "
        f"connect failures {r.connect_failures:,}",
        f"- connect: {r.connect_seconds:.1f} s, {r.connects_per_s:,.0f} connections/s, "
        f"{r.connect_cpu_ms:.2f} ms gateway CPU per connection; CPU while connecting: "
        + ", ".join(f"{k} {v:.0f}%" for k, v in r.connect_cpu_percent.items()),
        f"- idle {r.idle_seconds:.0f} s: {r.pings_answered_during_idle:,} pings answered, "
        f"{r.lost_during_idle:,} connections lost",
        f"- broadcast: {r.broadcast_delivered:,}/{r.connections_planned:,} delivered, "
        f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms",
        f"- kernel: {r.kernel_tcp}",
        "- gateway log lines: "
        + (", ".join(f"{k} x{v}" for k, v in r.gateway_log.items()) or "none"),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--gateways", type=int, default=6, help="gateway processes, one port")
    p.add_argument("--clients", type=int, default=7, help="client processes (one address each)")
    p.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default=default_client(),
        help="WebSocket client implementation (only go: scripts/bench/wsclient_go)",
    )
    p.add_argument("--connect-rate", type=float, default=1_500.0, help="new connections/s")
    p.add_argument("--concurrency", type=int, default=600, help="handshakes in flight, total")
    p.add_argument("--ping-seconds", type=float, default=25.0, help="GATEWAY_PING_SECONDS")
    p.add_argument("--idle-seconds", type=float, default=0.0, help="default: 2.4 ping rounds")
    p.add_argument("--broadcast-rate", type=float, default=20_000.0, help="events/s at the end")
    p.add_argument("--gateway-root", type=Path, default=ROOT, help="tree to run gateway from")
    p.add_argument("--json", type=Path, help="write every number here as JSON")
    args = p.parse_args(argv)
    args.idle_seconds = args.idle_seconds or max(60.0, 2.4 * args.ping_seconds)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = procs.Children(last=("redis",)).install()
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-connections-"))
    try:
        check_limits(args)
        report = run(args, children, log_dir)
    except BenchError as exc:
        print(f"gateway_connections: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway_connections: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    report.gateway_log = log_summary(log_dir)
    print(markdown(report))
    if args.json:
        results: dict[str, Any] = {"machine": machine_info(), "argv": sys.argv}
        results["report"] = asdict(report)
        args.json.write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
