"""Runs the whole system in the foreground: local stack, migrations, topics, and every
service under one supervisor with prefixed logs. A service that exits is started again
(back-off with jitter, crash loops reported); only Ctrl-C or SIGTERM stops everything.

    make run                       # or: .venv/bin/python scripts/run.py
    make demo                      # the same, plus local APNs/Web Push stand-ins
    make run-cluster               # the clustered topology (--cluster, below)
    python scripts/run.py --keep-stack    # leave Postgres/Redis/Kafka running on exit

Start-up goes in dependency order, each step waiting for /readyz: the API servers, then
the gateways (they resume clients by asking the API server), then fan-out and push. A
service that fails its first start stops everything (a port in use, a bad setting: a
restart would not help); after that, every exit is a restart (scripts/supervise/).

Demo mode (--demo) starts `python -m standins` first (fake APNs and Web Push services
that speak the real protocols, decrypt and record what they get) and points the push
worker at them, so `scripts/demo_push.py` can show pushes happening end to end.

Clustered topology (--cluster): a Redis Cluster of 3 masters and 3 replicas
(scripts/redis_cluster.py) and 3 Kafka brokers (scripts/kafka_cluster.py), both keeping
their data under .stack/cluster/ between runs, beside the stack's Postgres and its standby
(DATABASE_READ_URL); then two of every service, each on a port of its own as on separate
machines, with REDIS_CLUSTER=true, KAFKA_BOOTSTRAP on the three brokers and topics made
with KAFKA_REPLICATION_FACTOR=3, KAFKA_MIN_INSYNC_REPLICAS=2. Their ports: CLUSTER_REDIS_PORT
(default 17001: masters 17001-17003, replicas 17004-17006, cluster bus 10000 above) and
CLUSTER_KAFKA_PORT (default 19092: brokers 19092-19094, controllers 100 above); their
data in CLUSTER_DIR (default .stack/cluster).

Settings: every service setting in README.md, plus SERVER_PROCESSES, GATEWAY_PROCESSES,
FANOUT_PROCESSES and PUSH_PROCESSES (default: half the cores, every core, 1 and 1; 2 each
with --cluster), SEPARATE_PORTS (default false, true with --cluster: process n of every
service listens on its port + 100*n, as a node of its own; otherwise API servers share
SERVER_PORT and gateways GATEWAY_PORT through SO_REUSEPORT, while fan-out and push
workers, which cannot share, always take port + 100*n), READY_TIMEOUT (seconds to wait for
each start-up step's /readyz, default 90), RESTART_FIRST_DELAY (seconds before a service's
first restart, doubling from there; default 0.5, tests shorten it). GATEWAY_API_URL
defaults to this run's API server (gateway n to API server n, when they have ports of
their own).

Why our own asyncio loop rather than a process manager: supervisord has no readiness
(a program counts as up after `startsecs`, `priority` orders starts without waiting),
retries at a fixed pace with no jitter and marks a program FATAL after `startretries`,
and writes children's output to files, not prefixed to the terminal; circus brings pyzmq
and tornado, restarts at a constant delay and its flapping plugin stops a watcher after
`max_retry`; honcho has the prefixed foreground logs but, like foreman, stops everything
when one process exits. Each would need our readiness-ordered start on top, and the
restart loop itself is about a hundred lines (scripts/supervise/child.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from supervise.child import PROBE_EVERY, Child, Service, say, stopped_within
from supervise.restarts import RestartPolicy, Restarts

ROOT = Path(__file__).resolve().parent.parent
STACK = [sys.executable, str(ROOT / "scripts" / "stack.py")]
COLORS = ["36", "35", "33", "32", "34", "31"]
STANDINS_DIR = ROOT / ".stack" / "standins"
CLUSTER_DIR = ROOT / ".stack" / "cluster"  # the clustered topology's Redis and Kafka data
STANDINS_PORTS = {"control": 8090, "apns": 8091, "webpush": 8092}


class StartupFailed(RuntimeError):
    """A service died or was not ready during start-up: everything stops, exit 1."""


def stack_env() -> dict[str, str]:
    """URLs of the local stack (for variables the user did not set)."""
    out = subprocess.run([*STACK, "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip().strip("'\"")
    return env


# Each service's port setting and its default.
PORT_SETTINGS = {
    "server": ("SERVER_PORT", 8080),
    "gateway": ("GATEWAY_PORT", 8081),
    "fanout": ("FANOUT_PORT", 8082),
    "push": ("PUSH_PORT", 8083),
}
NODE_PORT_STEP = 100  # process n of a service on a port of its own: its port + 100*n


@dataclass(frozen=True, slots=True)
class Node:
    """One service process to supervise, and the settings that are its own (its port,
    the API server a gateway resumes through) over the run's."""

    service: Service
    env: Mapping[str, str] = field(default_factory=dict)


def flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def process_counts(env: Mapping[str, str]) -> dict[str, int]:
    cores = os.cpu_count() or 1
    # Half the cores for API servers: the rest runs Redis, Postgres, Kafka and the
    # gateways. On 2 cores one server process serves the feed faster than two: it takes
    # several requests per wake-up and shares Redis writes (BENCHMARKS.md, feed read).
    defaults = {"server": max(1, cores // 2), "gateway": cores, "fanout": 1, "push": 1}
    return {
        module: int(env.get(f"{module.upper()}_PROCESSES", n)) for module, n in defaults.items()
    }


def ports_of(env: Mapping[str, str], module: str, count: int) -> list[int]:
    """API and gateway processes share their port (SO_REUSEPORT; the kernel spreads
    connections) unless SEPARATE_PORTS; fan-out and push workers cannot share one."""
    setting, default = PORT_SETTINGS[module]
    port = int(env.get(setting, default))
    if module in ("server", "gateway") and not flag(env, "SEPARATE_PORTS"):
        return [port] * count
    return [port + NODE_PORT_STEP * n for n in range(count)]


def nodes_of(env: Mapping[str, str], module: str, count: int, color: str) -> list[Node]:
    ports = ports_of(env, module, count)
    setting = PORT_SETTINGS[module][0]
    # Numbered when there may be several; one fan-out or push worker keeps its plain name.
    numbered = module in ("server", "gateway") or count > 1
    return [
        Node(
            Service(f"{module}{n + 1}" if numbered else module, module, port, color),
            {setting: str(port)},
        )
        for n, port in enumerate(ports)
    ]


def steps(env: Mapping[str, str], demo: bool) -> list[list[Node]]:
    """The services in start-up order: each step is ready before the next starts. One
    outbox relay among the API servers holds its lock at a time; fan-out and push
    workers share their topics' partitions as one consumer group each."""
    counts = process_counts(env)
    servers = nodes_of(env, "server", counts["server"], COLORS[0])
    gateways = nodes_of(env, "gateway", counts["gateway"], COLORS[1])
    if "GATEWAY_API_URL" not in env:  # gateways resume clients through this run's servers
        gateways = [
            Node(gateway.service, {**gateway.env, "GATEWAY_API_URL": f"http://127.0.0.1:{port}"})
            for gateway, port in zip(
                gateways, itertools.cycle(s.service.port for s in servers), strict=False
            )
        ]
    found = [
        servers,
        gateways,
        [
            *nodes_of(env, "fanout", counts["fanout"], COLORS[2]),
            *nodes_of(env, "push", counts["push"], COLORS[3]),
        ],
    ]
    return [[Node(standins_service())], *found] if demo else found


def standins_service() -> Service:
    return Service(
        "standins",
        "standins",
        STANDINS_PORTS["control"],
        COLORS[4],
        args=(
            "--dir",
            str(STANDINS_DIR),
            *("--control-port", str(STANDINS_PORTS["control"])),
            *("--apns-port", str(STANDINS_PORTS["apns"])),
            *("--webpush-port", str(STANDINS_PORTS["webpush"])),
        ),
        ready_path="/received",
    )


def standins_env() -> dict[str, str]:
    """The settings the stand-ins printed (APNS_URL, APNS_KEY_FILE, PUSH_CA_FILE, ...)."""
    found = {}
    for line in (STANDINS_DIR / "standins.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


async def start_step(
    kids: dict[Child, dict[str, str]], limit_seconds: float, stop: asyncio.Event
) -> bool:
    """Starts `kids` (each with its environment) and waits until each is ready; False if
    `stop` came first."""
    started = time.monotonic()
    for kid, env in kids.items():
        await kid.spawn(env)
    pending = list(kids)
    while pending:
        pending = [kid for kid in pending if not await kid.ready()]
        dead = [kid.name for kid in kids if not kid.running]
        if dead:
            raise StartupFailed(f"{', '.join(dead)} exited during start-up (see its log above)")
        if pending and time.monotonic() - started > limit_seconds:
            names = ", ".join(kid.name for kid in pending)
            raise StartupFailed(f"not ready after {limit_seconds:.0f} s: {names}")
        if pending and await stopped_within(stop, PROBE_EVERY):
            return False
    names = ", ".join(kid.name for kid in kids)
    say(f"{names} ready in {time.monotonic() - started:.1f} s")
    return not stop.is_set()


async def supervise(
    env: dict[str, str], ready_timeout: float, demo: bool, policy: RestartPolicy
) -> int:
    plan = steps(env, demo)
    width = max(len(node.service.name) for step in plan for node in step)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kids: list[Child] = []
    keepers: dict[asyncio.Task[None], Child] = {}
    started = time.monotonic()
    try:
        for number, step in enumerate(plan):
            batch = {
                Child(node.service, ROOT, width, Restarts(policy)): {**env, **node.env}
                for node in step
            }
            kids += batch
            if not await start_step(batch, ready_timeout, stop):
                return 130
            for kid, own in batch.items():
                keepers[asyncio.create_task(kid.keep(own, stop, ready_timeout))] = kid
            if demo and number == 0:
                # The stand-ins make a new CA and key on start: the services need them.
                env = {**env, **standins_env()}
        print_urls(env, plan, time.monotonic() - started, demo)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *keepers}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        broken = [(task, kid) for task, kid in keepers.items() if task in done]
        for task, kid in broken:  # a keeper returns only once stopped: this one failed
            say(f"error: supervising {kid.name} failed: {task.exception()!r}")
        return 1 if broken else 0
    except StartupFailed as exc:
        say(f"error: {exc}")
        return 1
    finally:
        say("stopping services...")
        stop.set()
        await asyncio.gather(*keepers, return_exceptions=True)  # each stops its own
        await asyncio.gather(*(kid.stop() for kid in kids))


def urls(plan: list[list[Node]], module: str, path: str = "", scheme: str = "http") -> str:
    ports = dict.fromkeys(
        n.service.port for step in plan for n in step if n.service.module == module
    )
    return "  ".join(f"{scheme}://127.0.0.1:{port}{path}" for port in ports)


def print_urls(env: Mapping[str, str], plan: list[list[Node]], took: float, demo: bool) -> None:
    server = next(n.service.port for step in plan for n in step if n.service.module == "server")
    say(f"all services ready in {took:.1f} s")
    print(
        f"""
  API + web client   {urls(plan, "server", "/")}
  live stream        {urls(plan, "gateway", "/v1/stream", "ws")}   (SSE: /v1/stream/sse)
  health / metrics   http://127.0.0.1:{server}/readyz  http://127.0.0.1:{server}/metrics
  fan-out workers    {urls(plan, "fanout", "/metrics")}
  push workers       {urls(plan, "push", "/metrics")}
  ops dashboard      http://127.0.0.1:{server}/ops   (token: OPERATOR_TOKEN)
  Press Ctrl-C to stop everything.
""",
        flush=True,
    )
    if demo:
        print(
            f"""  Demo: push stand-ins at {env.get("STANDINS_CONTROL_URL")}/received
  Try:  .venv/bin/python scripts/demo_push.py   (a post and a like become pushes)
""",
            flush=True,
        )


def clustered(infra: contextlib.ExitStack, env: Mapping[str, str]) -> dict[str, str]:
    """Starts the clustered topology's Redis Cluster and Kafka brokers (stopped when
    `infra` closes); the settings that point the services at them."""
    if str(ROOT) not in sys.path:  # run as a file: only scripts/ is on the path
        sys.path.insert(0, str(ROOT))
    from scripts.kafka_cluster import kafka_cluster
    from scripts.redis_cluster import redis_cluster

    redis_port = int(env.get("CLUSTER_REDIS_PORT", "17001"))
    kafka_port = int(env.get("CLUSTER_KAFKA_PORT", "19092"))
    home = Path(env.get("CLUSTER_DIR", str(CLUSTER_DIR)))
    say("starting a Redis Cluster of 3 masters and 3 replicas...")
    redis = infra.enter_context(
        redis_cluster(
            home / "redis",
            masters=3,
            replicas=1,
            ports=range(redis_port, redis_port + 6),
            # A dead master is replaced in about 6 s, not Redis's default 16.
            node_timeout_ms=5000,
            persist=True,
        )
    )
    say(f"redis cluster ready: masters {redis.ports}, replicas {redis.replica_of}")
    say("starting 3 Kafka brokers...")
    kafka = infra.enter_context(
        kafka_cluster(
            home / "kafka",
            brokers=3,
            ports=range(kafka_port, kafka_port + 3),
            controller_ports=range(kafka_port + 100, kafka_port + 103),
            stop_grace=30.0,
        )
    )
    say(f"kafka brokers ready: {kafka.bootstrap}")
    return {
        "REDIS_CLUSTER": "true",
        "REDIS_URL": redis.url,
        "KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KAFKA_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "SEPARATE_PORTS": env.get("SEPARATE_PORTS", "true"),
        **{
            f"{m}_PROCESSES": env.get(f"{m}_PROCESSES", "2")
            for m in ("SERVER", "GATEWAY", "FANOUT", "PUSH")
        },
    }


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before the services run: unwind as Ctrl-C does, so the Redis and Kafka
    nodes started so far are stopped, not orphaned."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-stack",
        action="store_true",
        help="leave the local Postgres, Redis and Kafka running on exit",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also start local APNs/Web Push stand-ins and point the push worker at them",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the clustered topology: Redis Cluster 3+3, 3 Kafka brokers, 2 of every service",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    if subprocess.run([*STACK, "start"], check=False).returncode != 0:
        return 1
    env = {**stack_env(), **os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        with contextlib.ExitStack() as infra:
            if args.cluster:
                env.update(clustered(infra, env))
            if (
                subprocess.run(
                    [sys.executable, "-m", "core.bootstrap"], cwd=ROOT, env=env, check=False
                ).returncode
                != 0
            ):
                return 1
            policy = RestartPolicy(first_delay=float(env.get("RESTART_FIRST_DELAY", "0.5")))
            ready_timeout = float(env.get("READY_TIMEOUT", "90"))
            return asyncio.run(supervise(env, ready_timeout, args.demo, policy))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if not args.keep_stack:
            subprocess.run([*STACK, "stop"], check=False)


if __name__ == "__main__":
    sys.exit(main())
