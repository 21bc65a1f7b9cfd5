"""Runs the whole system in the foreground: local stack, migrations, topics, and every
service under one supervisor with prefixed logs. Ctrl-C stops everything cleanly.

    make run                       # or: .venv/bin/python scripts/run.py
    make demo                      # the same, plus local APNs/Web Push stand-ins
    python scripts/run.py --keep-stack    # leave Postgres/Redis/Kafka running on exit

Demo mode (--demo) starts `python -m push.standins` first (fake APNs and Web Push services
that speak the real protocols, decrypt and record what they get) and points the push
worker at them, so `scripts/demo_push.py` can show pushes happening end to end.

Settings: every service setting in README.md, plus SERVER_PROCESSES and GATEWAY_PROCESSES
(default: number of cores each) and READY_TIMEOUT (seconds to wait for every /readyz, default 90).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = [sys.executable, str(ROOT / "scripts" / "stack.py")]
COLORS = ["36", "35", "33", "32", "34", "31"]
STOP_GRACE_SECONDS = 15.0


@dataclass
class Child:
    name: str
    module: str
    port: int
    color: str
    args: tuple[str, ...] = ()
    ready_path: str = "/readyz"
    proc: asyncio.subprocess.Process | None = None

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.ready_path}"


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


def stack_env() -> dict[str, str]:
    """URLs of the local stack (for variables the user did not set)."""
    out = subprocess.run([*STACK, "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip().strip("'\"")
    return env


def children(env: dict[str, str]) -> list[Child]:
    port = lambda key, default: int(env.get(key, default))  # noqa: E731
    # Half the cores for API servers: the rest runs Redis, Postgres, Kafka and the
    # gateways. On 2 cores one server process serves the feed faster than two: it takes
    # several requests per wake-up and shares Redis writes (BENCHMARKS.md, feed read).
    servers = int(env.get("SERVER_PROCESSES", max(1, (os.cpu_count() or 1) // 2)))
    gateways = int(env.get("GATEWAY_PROCESSES", os.cpu_count() or 1))
    # API and gateway processes share their port (SO_REUSEPORT); the kernel spreads
    # connections. One outbox relay among the API servers holds its lock at a time.
    found = [
        Child(f"server{index + 1}", "server", port("SERVER_PORT", 8080), COLORS[0])
        for index in range(servers)
    ]
    for index in range(gateways):
        found.append(Child(f"gateway{index + 1}", "gateway", port("GATEWAY_PORT", 8081), COLORS[1]))
    found.append(Child("fanout", "fanout", port("FANOUT_PORT", 8082), COLORS[2]))
    found.append(Child("push", "push", port("PUSH_PORT", 8083), COLORS[3]))
    return found


async def pump(child: Child, width: int) -> None:
    assert child.proc is not None and child.proc.stdout is not None
    prefix = (
        f"\033[{child.color}m{child.name:<{width}} |\033[0m "
        if sys.stdout.isatty()
        else (f"{child.name:<{width}} | ")
    )
    async for line in child.proc.stdout:
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def wait_ready(kids: list[Child], limit_seconds: float) -> None:
    deadline = time.monotonic() + limit_seconds
    pending = {kid.ready_url: kid.name for kid in kids}
    while pending:
        for url in list(pending):
            if await asyncio.to_thread(is_ready, url):
                del pending[url]
        dead = [kid.name for kid in kids if kid.proc and kid.proc.returncode is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up (see its log above)")
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"not ready after {limit_seconds:.0f} s: {', '.join(pending.values())}"
            )
        await asyncio.sleep(0.3)


async def stop_all(kids: list[Child]) -> None:
    live = [k.proc for k in kids if k.proc and k.proc.returncode is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_GRACE_SECONDS)
    except TimeoutError:
        for proc in live:
            if proc.returncode is None:
                say(f"pid {proc.pid} did not stop in {STOP_GRACE_SECONDS:.0f} s; killing it")
                proc.kill()
        await asyncio.gather(*(p.wait() for p in live))


STANDINS_DIR = ROOT / ".stack" / "standins"
STANDINS_PORTS = {"control": 8090, "apns": 8091, "webpush": 8092}


def standins_child() -> Child:
    return Child(
        "standins",
        "push.standins",
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


async def start(kid: Child, env: dict[str, str], width: int) -> asyncio.Task[None]:
    # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
    kid.proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        kid.module,
        *kid.args,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return asyncio.create_task(pump(kid, width))


async def supervise(env: dict[str, str], ready_timeout: float, demo: bool) -> int:
    kids = children(env)
    if demo:
        kids.insert(0, standins_child())
    width = max(len(k.name) for k in kids)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pumps = []
    started = time.monotonic()
    try:
        if demo:
            # The stand-ins make a new CA and key on start: the services need their settings.
            pumps.append(await start(kids[0], env, width))
            await wait_ready(kids[:1], ready_timeout)
            env = {**env, **standins_env()}
        for kid in kids[1 if demo else 0 :]:
            pumps.append(await start(kid, env, width))
        ready = asyncio.create_task(wait_ready(kids, ready_timeout))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            return 130
        ready.result()  # raises when a child died or timed out
        print_urls(env, time.monotonic() - started, demo)
        waits = {asyncio.create_task(k.proc.wait()): k for k in kids if k.proc}
        done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waits:
                say(f"{waits[task].name} exited unexpectedly (code {task.result()}); stopping")
                return 1
        return 0
    except RuntimeError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        say("stopping services...")
        await stop_all(kids)
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
    if (
        subprocess.run(
            [sys.executable, "-m", "core.bootstrap"], cwd=ROOT, env=env, check=False
        ).returncode
        != 0
    ):
        return 1
    try:
        code = asyncio.run(supervise(env, float(env.get("READY_TIMEOUT", "90")), args.demo))
    finally:
        if not args.keep_stack:
            subprocess.run([*STACK, "stop"], check=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
