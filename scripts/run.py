"""Runs the whole system in the foreground: local stack, migrations, topics, and every
service under one supervisor with prefixed logs. A service that exits is started again
(back-off with jitter, crash loops reported); only Ctrl-C or SIGTERM stops everything.

    make run                       # or: .venv/bin/python scripts/run.py
    make demo                      # the same, plus local APNs/Web Push stand-ins
    python scripts/run.py --keep-stack    # leave Postgres/Redis/Kafka running on exit

Start-up goes in dependency order, each step waiting for /readyz: the API servers, then
the gateways (they resume clients by asking the API server), then fan-out and push. A
service that fails its first start stops everything (a port in use, a bad setting: a
restart would not help); after that, every exit is a restart (scripts/supervise/).

Demo mode (--demo) starts `python -m standins` first (fake APNs and Web Push services
that speak the real protocols, decrypt and record what they get) and points the push
worker at them, so `scripts/demo_push.py` can show pushes happening end to end.

Settings: every service setting in README.md, plus SERVER_PROCESSES and GATEWAY_PROCESSES
(default: half the cores, and every core), READY_TIMEOUT (seconds to wait for each start-up
step's /readyz, default 90), RESTART_FIRST_DELAY (seconds before a service's first restart,
doubling from there; default 0.5, tests shorten it). GATEWAY_API_URL defaults to this run's
API server.

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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from supervise.child import PROBE_EVERY, Child, Service, say, stopped_within
from supervise.restarts import RestartPolicy, Restarts

ROOT = Path(__file__).resolve().parent.parent
STACK = [sys.executable, str(ROOT / "scripts" / "stack.py")]
COLORS = ["36", "35", "33", "32", "34", "31"]
STANDINS_DIR = ROOT / ".stack" / "standins"
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


def steps(env: dict[str, str], demo: bool) -> list[list[Service]]:
    """The services in start-up order: each step is ready before the next starts."""

    def port(key: str, default: int) -> int:
        return int(env.get(key, default))

    # Half the cores for API servers: the rest runs Redis, Postgres, Kafka and the
    # gateways. On 2 cores one server process serves the feed faster than two: it takes
    # several requests per wake-up and shares Redis writes (BENCHMARKS.md, feed read).
    servers = int(env.get("SERVER_PROCESSES", max(1, (os.cpu_count() or 1) // 2)))
    gateways = int(env.get("GATEWAY_PROCESSES", os.cpu_count() or 1))
    # API and gateway processes share their port (SO_REUSEPORT); the kernel spreads
    # connections. One outbox relay among the API servers holds its lock at a time.
    found = [
        [
            Service(f"server{i + 1}", "server", port("SERVER_PORT", 8080), COLORS[0])
            for i in range(servers)
        ],
        [
            Service(f"gateway{i + 1}", "gateway", port("GATEWAY_PORT", 8081), COLORS[1])
            for i in range(gateways)
        ],
        [
            Service("fanout", "fanout", port("FANOUT_PORT", 8082), COLORS[2]),
            Service("push", "push", port("PUSH_PORT", 8083), COLORS[3]),
        ],
    ]
    return [[standins_service()], *found] if demo else found


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
    kids: list[Child], env: dict[str, str], limit_seconds: float, stop: asyncio.Event
) -> bool:
    """Starts `kids` and waits until each is ready; False if `stop` came first."""
    started = time.monotonic()
    for kid in kids:
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
    width = max(len(service.name) for step in plan for service in step)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kids: list[Child] = []
    keepers: dict[asyncio.Task[None], Child] = {}
    started = time.monotonic()
    try:
        for number, step in enumerate(plan):
            batch = [Child(service, ROOT, width, Restarts(policy)) for service in step]
            kids += batch
            if not await start_step(batch, env, ready_timeout, stop):
                return 130
            for kid in batch:
                keepers[asyncio.create_task(kid.keep(env, stop, ready_timeout))] = kid
            if demo and number == 0:
                # The stand-ins make a new CA and key on start: the services need them.
                env = {**env, **standins_env()}
        print_urls(env, time.monotonic() - started, demo)
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


def print_urls(env: dict[str, str], took: float, demo: bool) -> None:
    host = "127.0.0.1"
    server, gateway = env.get("SERVER_PORT", "8080"), env.get("GATEWAY_PORT", "8081")
    say(f"all services ready in {took:.1f} s")
    print(
        f"""
  API + web client   http://{host}:{server}/
  live stream        ws://{host}:{gateway}/v1/stream   (SSE: http://{host}:{gateway}/v1/stream/sse)
  health / metrics   http://{host}:{server}/readyz  http://{host}:{server}/metrics
  fan-out worker     http://{host}:{env.get("FANOUT_PORT", "8082")}/metrics
  push worker        http://{host}:{env.get("PUSH_PORT", "8083")}/metrics
  ops dashboard      http://{host}:{server}/ops   (token: OPERATOR_TOKEN)
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
    args = parser.parse_args()
    if subprocess.run([*STACK, "start"], check=False).returncode != 0:
        return 1
    env = {**stack_env(), **os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    # Gateways resume clients through the API server: this run's, unless told otherwise.
    env.setdefault("GATEWAY_API_URL", f"http://127.0.0.1:{env.get('SERVER_PORT', '8080')}")
    if (
        subprocess.run(
            [sys.executable, "-m", "core.bootstrap"], cwd=ROOT, env=env, check=False
        ).returncode
        != 0
    ):
        return 1
    try:
        policy = RestartPolicy(first_delay=float(env.get("RESTART_FIRST_DELAY", "0.5")))
        code = asyncio.run(supervise(env, float(env.get("READY_TIMEOUT", "90")), args.demo, policy))
    finally:
        if not args.keep_stack:
            subprocess.run([*STACK, "stop"], check=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
