"""Live delivery through ONE gateway process: how many messages per second it delivers
at most, and the post-to-client latency at 50% and 90% of that rate.

    .venv/bin/python -m scripts.bench.gateway_throughput [--modes fanin,fanout] [--json F]

Set-up (everything on loopback, bounded in time, stopped at the end or on Ctrl-C): a
private Redis, one `python -m gateway` on a free port, client processes holding the
WebSocket connections (scripts/bench/wsclient_go, ~2-2.5x less CPU than the Python
client it replaced), one publisher process
(gateway_publisher).
Two ways to load it:
- fanin: one connection per user, one PUBLISH per delivered message (a follower getting
  a post: the gateway's Redis input is as large as its output);
- fanout: many connections of the same user, one PUBLISH reaches all of them (a user
  with many tabs, or an a:<author> channel: the output is many times the input).
Per mode: a closed-loop phase (at most --window deliveries in flight) finds the maximum
delivered rate; open-loop phases at --fractions of it measure latency. The machine's
own ceiling (Redis pushing to one subscriber) is measured first, for context.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import orjson

from scripts.bench import gateway_ceiling, tail
from scripts.bench.common import BenchError
from scripts.bench.cpu import CpuWindow, machine_info, wait_quiet, write_calls
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
from scripts.bench.gateway_wsclient import RECEIVED, SLOTS, SLOW_US
from scripts.bench.loadgen import default_client
from scripts.bench.progress import note
from scripts.supervise import procs

QUANTILES = (50.0, 90.0, 99.0, 99.9)
WARMUP_RATE = 5_000.0
DRAIN_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    users: int
    per_user: int  # connections per user: deliveries per PUBLISH
    user_base: int

    @property
    def connections(self) -> int:
        return self.users * self.per_user


@dataclass(slots=True)
class PhaseReport:
    mode: str
    name: str
    offered_per_s: float  # deliveries per second asked of the publisher (0: closed loop)
    delivered_per_s: float  # measured at the clients
    gateway_per_s: float  # from the gateway's own delivered_total
    delivered: int
    expected: int
    latency_ms: dict[str, float]
    cpu_percent: dict[str, float]  # of one core
    publisher_worst_lag_s: float
    close_codes: dict[int, int]
    lost_connections: int
    writes_per_message: float  # the gateway's write system calls per message delivered
    tail: list[str]  # when the messages over SLOW_US came, and what the machine did then


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    children: procs.Children
    redis_url: str
    redis_pid: int
    gateway: Gateway
    port: int

    def run_mode(self, mode: Mode) -> list[PhaseReport]:
        note(f"{mode.name}: {mode.connections:,} connections over {mode.users:,} users")
        user_ids = [mode.user_base + u for u in range(mode.users) for _ in range(mode.per_user)]
        plans = split_plans(
            user_ids,
            self.args.clients,
            loopback_sources(self.args.clients),
            self.port,
            SECRET,
            self.args.connect_rate,
            concurrency=500,
        )
        fleet = Fleet(plans, self.args.client).start()
        publisher: BaseProcess | None = None
        try:
            took = fleet.wait_connected(120, _show_connecting)
            note(f"{mode.name}: {fleet.total('connected'):,} connected in {took:.1f} s")
            self._wait_users(mode.users)
            publisher, control = self._start_publisher(mode, fleet)
            return self._phases(mode, fleet, publisher, control)
        finally:
            if publisher is not None:
                publisher.kill()  # it only ever waits for a command between phases
                publisher.join(5)
            fleet.stop()

    def _wait_users(self, users: int) -> None:
        """Connected is not yet subscribed: wait until the gateway reports every user."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = gateway_stats(self.redis_url, [self.gateway]).get(self.gateway.pid, {})
            if stats.get("users", 0) >= users:
                return
            time.sleep(0.5)
        raise BenchError(f"gateway does not report {users:,} users after 30 s")

    def _start_publisher(self, mode: Mode, fleet: Fleet) -> tuple[BaseProcess, Connection]:
        plan = PublishPlan(
            self.redis_url, mode.user_base, mode.users, mode.per_user, self.args.text_chars
        )
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=publisher_main,
            args=(plan, fleet.counters, len(SLOTS), RECEIVED, child),
            name="publisher",
        )
        proc.start()
        return proc, parent

    def _phases(
        self, mode: Mode, fleet: Fleet, publisher: BaseProcess, control: Connection
    ) -> list[PhaseReport]:
        args = self.args
        pids = {
            "gateway": [self.gateway.pid],
            "redis": [self.redis_pid],
            "clients": fleet.pids,
            "publisher": [publisher.pid or 0],
        }
        run = PhaseRunner(self, mode, fleet, control, pids)
        warm = run.phase("warm-up", ("open", WARMUP_RATE, args.warmup_seconds, 0), 0, quiet=False)
        if warm.delivered < warm.expected:
            note(f"warm-up: {warm.delivered:,}/{warm.expected:,} delivered (subscribing?)")
        best: PhaseReport | None = None
        for n, window in enumerate(args.windows, start=1):
            report = run.phase(
                f"max (window {window:,})", ("closed", window, args.saturate_seconds, n), n
            )
            if best is None or report.delivered_per_s > best.delivered_per_s:
                best = report
        assert best is not None
        for n, fraction in enumerate(args.fractions, start=len(args.windows) + 1):
            rate = fraction * best.delivered_per_s
            command = ("open", rate, args.open_seconds, n)
            run.phase(f"{fraction:.0%} of max", command, n, offered=rate)
        return run.done


@dataclass(slots=True)
class PhaseRunner:
    bench: Bench
    mode: Mode
    fleet: Fleet
    control: Connection
    pids: dict[str, list[int]]
    done: list[PhaseReport] = field(default_factory=list)

    def phase(
        self,
        name: str,
        command: tuple[Any, ...],
        number: int,
        offered: float = 0.0,
        quiet: bool = True,
    ) -> PhaseReport:
        args = self.bench.args
        if quiet:
            ours = [pid for group in self.pids.values() for pid in group]
            other = wait_quiet(args.quiet_below, args.quiet_wait, ours)
            note(f"{self.mode.name}: {name} (others used {other:.0f}% of a core just before)")
        before = self._stats()
        received = self.fleet.total("received")
        cpu = CpuWindow(self.pids).start()
        sampler = tail.Sampler(
            {"gateway": tuple(self.pids["gateway"]), "redis": tuple(self.pids["redis"])}
        ).start()
        started = time.time()
        writes = write_calls(self.bench.gateway.pid)
        self.control.send(command)
        result = self.control.recv()
        cpu.stop()
        after = self._stats()
        self._drain(received + result["deliveries"])
        samples = sampler.stop()
        writes = write_calls(self.bench.gateway.pid) - writes
        got = self.fleet.collect().get(number, PhaseResult())
        window = (started, time.time())
        slow = tail.explain(window, got.slow_since(started), samples, SLOW_US / 1e6, "messages")
        report = PhaseReport(
            mode=self.mode.name,
            name=name,
            offered_per_s=offered,
            delivered_per_s=got.rate(),
            gateway_per_s=_rate(before, after),
            delivered=got.count,
            expected=result["deliveries"],
            latency_ms=got.latency_ms(QUANTILES),
            cpu_percent={k: cpu.percent(k) for k in self.pids} | {"other": cpu.other_percent()},
            publisher_worst_lag_s=result["worst_lag_s"],
            close_codes=self.fleet.close_codes,
            lost_connections=self.fleet.total("lost"),
            writes_per_message=writes / max(got.count, 1),
            tail=slow,
        )
        _show_phase(report)
        self.done.append(report)
        return report

    def _drain(self, target: int) -> None:
        """What is still in flight belongs to this phase: wait until it has arrived, or
        nothing arrived for DRAIN_SECONDS (lost: a closed connection), at most 60 s."""
        deadline = time.monotonic() + 60
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_received = self.fleet.total("received")
            if now_received >= target:
                return
            if now_received != last:
                last, last_change = now_received, time.monotonic()
            elif time.monotonic() - last_change > DRAIN_SECONDS:
                return
            time.sleep(0.05)

    def _stats(self) -> dict[str, int]:
        gateway = self.bench.gateway
        return gateway_stats(self.bench.redis_url, [gateway]).get(gateway.pid, {})


def _rate(before: dict[str, int], after: dict[str, int]) -> float:
    if not before or not after:
        return float("nan")
    seconds = (after["reported_at_ms"] - before["reported_at_ms"]) / 1000
    return (after["delivered_total"] - before["delivered_total"]) / max(seconds, 1e-9)


def _show_connecting(connected: int, failed: int, elapsed: float) -> None:
    note(f"connecting: {connected:,} open, {failed:,} failed, {connected / elapsed:,.0f}/s")


def _show_phase(r: PhaseReport) -> None:
    lat = r.latency_ms
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in r.cpu_percent.items())
    note(
        f"  {r.name}: {r.delivered_per_s:,.0f} msgs/s delivered ({r.delivered:,}/{r.expected:,}),"
        f" p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms max {lat['max']:.1f} ms; CPU {cpu};"
        f" {r.writes_per_message:.2f} gateway writes per message"
    )
    if r.offered_per_s:  # a closed loop's latency is its window's queueing, by design
        for line in r.tail:
            note(f"    tail: {line}")


def markdown(reports: list[PhaseReport], client: str) -> str:
    # "per gateway core": delivered / the gateway's share of a core. On a shared 2-core
    # machine the gateway rarely gets a whole core; this is what one core would carry
    # at the same per-message cost.
    head = (
        f"WebSocket clients: {CLIENTS[client]}\n\n"
        "| mode | phase | offered msgs/s | delivered msgs/s | per gateway core "
        "| gateway's count/s | delivered/sent | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| CPU gateway | CPU redis | CPU clients | CPU publisher | CPU others "
        "| gateway writes per message |\n" + "|---" * 18 + "|\n"
    )
    rows = []
    for r in reports:
        lat, cpu = r.latency_ms, r.cpu_percent
        offered = f"{r.offered_per_s:,.0f}" if r.offered_per_s else "closed loop"
        rows.append(
            f"| {r.mode} | {r.name} | {offered} | {r.delivered_per_s:,.0f} "
            f"| {r.delivered_per_s / max(cpu['gateway'] / 100, 1e-9):,.0f} "
            f"| {r.gateway_per_s:,.0f} | {r.delivered:,}/{r.expected:,} "
            f"| {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {lat['p99.9']:.1f} "
            f"| {lat['max']:.1f} | {cpu['gateway']:.0f}% | {cpu['redis']:.0f}% "
            f"| {cpu['clients']:.0f}% | {cpu['publisher']:.0f}% | {cpu['other']:.0f}% "
            f"| {r.writes_per_message:.2f} |"
        )
    tails = [
        line
        for r in reports
        if r.offered_per_s
        for line in (f"- {r.mode}, {r.name}:", *tail.markdown(r.tail, indent="  "))
    ]
    if tails:
        title = f"When the open-loop phases' messages over {SLOW_US // 1000} ms came:"
        tails = ["", title, "", *tails]
    return head + "\n".join(rows) + "\n" + "".join(f"{line}\n" for line in tails)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modes", default="fanin,fanout", help="fanin, fanout or both")
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default=default_client(),
        help="WebSocket client implementation (only go: scripts/bench/wsclient_go)",
    )
    p.add_argument("--fanin-users", type=int, default=10_000)
    p.add_argument("--fanout-users", type=int, default=100)
    p.add_argument("--fanout-per-user", type=int, default=100)
    p.add_argument("--windows", default="20000", help="deliveries in flight, closed loop")
    p.add_argument("--fractions", default="0.5,0.7,0.9", help="open-loop rates, of the max")
    p.add_argument("--saturate-seconds", type=float, default=15.0)
    p.add_argument("--open-seconds", type=float, default=20.0)
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument("--connect-rate", type=float, default=2_000.0, help="connections/s")
    p.add_argument("--text-chars", type=int, default=100, help="post text in each event")
    p.add_argument("--quiet-below", type=float, default=50.0, help="%% of a core used by others")
    p.add_argument("--quiet-wait", type=float, default=120.0, help="max s to wait for quiet")
    p.add_argument("--skip-ceiling", action="store_true")
    p.add_argument("--gateway-root", type=Path, default=ROOT, help="tree to run gateway from")
    p.add_argument("--json", type=Path, help="write every number here as JSON")
    args = p.parse_args(argv)
    args.windows = [int(w) for w in args.windows.split(",")]
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    if set(args.modes) - {"fanin", "fanout"}:
        p.error("--modes takes fanin and/or fanout")
    return args


def modes(args: argparse.Namespace) -> list[Mode]:
    # Separate id ranges per mode: the hub of a mode never sees the other's users.
    known = {
        "fanin": Mode("fanin", args.fanin_users, 1, USER_BASE),
        "fanout": Mode("fanout", args.fanout_users, args.fanout_per_user, USER_BASE + 10**6),
    }
    return [known[m] for m in args.modes]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = procs.Children(last=("redis",)).install()
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-throughput-"))
    results: dict[str, Any] = {
        "machine": machine_info(),
        "argv": sys.argv,
        "client": CLIENTS[args.client],
    }
    note(f"WebSocket clients: {CLIENTS[args.client]}")
    try:
        with private_redis(children) as redis_url:
            rpid = redis_pid(redis_url)
            if not args.skip_ceiling:
                wait_quiet(args.quiet_below, args.quiet_wait, [rpid])
                ceiling = gateway_ceiling.measure(
                    redis_url, rpid, USER_BASE, args.fanin_users, args.text_chars
                )
                results["ceiling"] = asdict(ceiling)
            port = procs.free_port()
            env = gateway_env(
                redis_url, port, gateway_max_connections_per_user=args.fanout_per_user + 10
            )
            gateway = start_gateways(children, 1, env, redis_url, args.gateway_root, log_dir)[0]
            bench = Bench(args, children, redis_url, rpid, gateway, port)
            reports = [r for mode in modes(args) for r in bench.run_mode(mode)]
            results["phases"] = [asdict(r) for r in reports]
    except BenchError as exc:
        print(f"gateway_throughput: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gateway_throughput: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    results["gateway_log"] = log_summary(log_dir)
    print(markdown(reports, args.client))
    print(f"gateway log ({log_dir}):", results["gateway_log"] or "nothing above INFO")
    if "ceiling" in results:
        print(
            orjson.dumps(
                results["ceiling"], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
            ).decode()
        )
    if args.json:
        args.json.write_bytes(
            orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
