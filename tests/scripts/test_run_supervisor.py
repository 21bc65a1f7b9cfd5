"""scripts/run.py as people run it: the real supervisor over real services on the test
stack. Under live traffic (a poster, WebSocket followers that resume with ?since=) each
kind of service is SIGKILLed in turn and must come back by itself while the others keep
running, and no follower misses or repeats a post. Before that, on the same running
system, Redis is restarted under live traffic: every WebSocket client is told to resume
(4010: its node's pub/sub link dropped) and comes back with ?since=; none misses a post
or gets one twice, whatever order the replay, fan-out and the returning caches take, and
the timelines are still there afterwards (the stack's Redis keeps an append-only file).
Last, run.py stops everything it ever started. Plus the restart bookkeeping alone.

The first three live tests share one system (module scope: its start-up is most of
their cost); each brings its own traffic (a new author and new followers). They run in
this file's order, and each also works alone on a fresh system."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
import redis.asyncio as aioredis

from core import keys
from core.settings import Settings
from scripts.supervise.probe import listens
from scripts.supervise.restarts import RestartPolicy, Restarts, exit_reason
from tests.support.env import ROOT
from tests.support.live_traffic import (
    MODULES,
    Supervised,
    Traffic,
    live_traffic,
    still_running,
    supervised_system,
)
from tests.support.wait import eventually

CLIENTS = 200  # the number; 20 will do while changing this test
VICTIMS = ("fanout", "gateway", "push", "server")  # killed in this order
DOWN_SECONDS = 6.0  # Redis stopped this long


# -- the bookkeeping, alone ------------------------------------------------------------


def test_back_off_doubles_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    restarts = Restarts(rand=lambda: 0.0)  # no jitter drawn
    # Exits a minute apart: a back-off, never a crash loop.
    plans = [restarts.exited(1, ran_for=2.0, now=100.0 * i) for i in range(9)]
    assert [p.delay for p in plans] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [p.restart for p in plans] == list(range(1, 10))
    assert not any(p.crash_loop for p in plans)
    assert (
        plans[0].describe("fanout") == "fanout exited (exit code 1) after 2.0 s; restart 1 in 0.5 s"
    )
    stable = restarts.exited(-9, ran_for=61.0, now=2000.0)
    assert (stable.delay, stable.restart, stable.reason) == (0.5, 10, "killed by SIGKILL")
    assert restarts.exited(1, ran_for=1.0, now=2100.0).delay == 1  # and doubles again

    jittered = Restarts(RestartPolicy(jitter=0.2), rand=lambda: 1.0)
    assert [jittered.exited(1, 1.0, 100.0 * i).delay for i in range(3)] == [0.4, 0.8, 1.6]


def test_a_crash_loop_is_named_with_its_count_and_last_reason() -> None:
    restarts = Restarts(RestartPolicy(loop_exits=5, loop_window=60.0), rand=lambda: 0.0)
    first = [restarts.exited(1, ran_for=0.3, now=float(t)) for t in range(4)]
    assert not any(p.crash_loop for p in first)
    fifth = restarts.exited(1, ran_for=0.3, now=20.0)
    assert fifth.crash_loop and fifth.recent_exits == 5
    assert fifth.describe("fanout") == (
        "fanout is crash-looping: 5 exits in 60 s, last: exit code 1; next try in 8.0 s (restart 5)"
    )
    assert restarts.exited(3, ran_for=0.3, now=59.0).crash_loop  # 6 within the window
    # The early exits leave the window: 3 exits in the last 60 s (at 20, 59 and 75).
    later = restarts.exited(-15, ran_for=0.3, now=75.0)
    assert not later.crash_loop and later.recent_exits == 3
    assert later.delay == 30 and later.reason == "killed by SIGTERM"  # still backing off


def test_exit_reasons_name_the_signal() -> None:
    assert exit_reason(0) == "exit code 0"
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(-signal.SIGSEGV) == "killed by SIGSEGV"


def run_py(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/run.py as a module (it imports its sibling package as `supervise`)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("run_py", ROOT / "scripts" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def planned(run: ModuleType, env: dict[str, str]) -> list[tuple[str, int, dict[str, str]]]:
    return [
        (n.service.name, n.service.port, dict(n.env))
        for step in run.steps(env, False)
        for n in step
    ]


def test_the_plan_shares_front_ports_unless_told_and_never_a_workers_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_py(monkeypatch)
    two = {f"{m}_PROCESSES": "2" for m in ("SERVER", "GATEWAY", "FANOUT", "PUSH")}
    api = {"GATEWAY_API_URL": "http://127.0.0.1:8080"}
    assert planned(run, two) == [
        ("server1", 8080, {"SERVER_PORT": "8080"}),
        ("server2", 8080, {"SERVER_PORT": "8080"}),
        ("gateway1", 8081, {"GATEWAY_PORT": "8081", **api}),
        ("gateway2", 8081, {"GATEWAY_PORT": "8081", **api}),
        ("fanout1", 8082, {"FANOUT_PORT": "8082"}),
        ("fanout2", 8182, {"FANOUT_PORT": "8182"}),
        ("push1", 8083, {"PUSH_PORT": "8083"}),
        ("push2", 8183, {"PUSH_PORT": "8183"}),
    ]
    separate = planned(run, {**two, "SEPARATE_PORTS": "true", "SERVER_PORT": "9000"})
    assert separate[:4] == [
        ("server1", 9000, {"SERVER_PORT": "9000"}),
        ("server2", 9100, {"SERVER_PORT": "9100"}),
        # Each gateway resumes clients through an API server of its own.
        ("gateway1", 8081, {"GATEWAY_PORT": "8081", "GATEWAY_API_URL": "http://127.0.0.1:9000"}),
        ("gateway2", 8181, {"GATEWAY_PORT": "8181", "GATEWAY_API_URL": "http://127.0.0.1:9100"}),
    ]
    # One worker of each keeps its plain name; a GATEWAY_API_URL given is left alone.
    single = planned(run, {"SERVER_PROCESSES": "1", "GATEWAY_PROCESSES": "1", **api})
    assert [name for name, _, _ in single] == ["server1", "gateway1", "fanout", "push"]
    assert single[1][2] == {"GATEWAY_PORT": "8081"}


# -- run.py, its children and live traffic ---------------------------------------------


async def answers_ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def kill_and_see_it_back(running: Supervised, traffic: Traffic, module: str) -> None:
    before = running.children()
    victim = min(pid for pid, name in before.items() if name == module)
    os.kill(victim, signal.SIGKILL)
    new: set[int] = set()

    async def back() -> bool:
        nonlocal new
        now = running.children()
        new = {pid for pid, name in now.items() if name == module} - set(before)
        return (
            victim not in now
            and len(new) == 1
            # A restarted gateway shares its port: it must be the one listening too.
            and listens(min(new), running.ports[module])
            and await answers_ready(traffic.api, running.ports[module])
        )

    await eventually(back, seconds=90, what=f"{module} restarted and ready")
    (pid,) = new
    said = rf"run: {module}\d* restarted \(restart 1\), ready in [\d.]+ s; pid {pid}\n"

    async def logged() -> bool:
        return re.search(said, running.output()) is not None

    await eventually(logged, seconds=30, what=f"run.py saying {module} is back")
    output = running.output()
    assert re.search(rf"run: {module}\d* exited \(killed by SIGKILL\) after", output), output
    assert running.proc.poll() is None, output[-4000:]
    assert running.children() == {**{p: m for p, m in before.items() if p != victim}, pid: module}
    await traffic.posts_made(3)  # the API answers again, and the poster goes on


@pytest.fixture(scope="module")
def supervised(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervised]:
    """One system for the Redis restart, the kills and the stop, in that order."""
    with supervised_system(settings, tmp_path_factory.mktemp("supervised")) as running:
        yield running


@pytest.fixture
def fresh_supervised(settings: Settings, tmp_path: Path) -> Iterator[Supervised]:
    """A system of the test's own: restart bookkeeping nobody else has touched."""
    with supervised_system(settings, tmp_path) as running:
        yield running


async def timeline_sizes(url: str, users: list[int]) -> list[int]:
    client = aioredis.Redis.from_url(url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcard(keys.timeline(user))
            return list(await pipe.execute())
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_redis_restart_under_live_traffic_loses_nothing_and_repeats_nothing(
    supervised: Supervised,
) -> None:
    running = supervised
    async with live_traffic(running, CLIENTS) as traffic:
        await traffic.feeds()  # read once: their timelines live in Redis from now on
        await traffic.posts_made(3)
        users = [int(user.id) for user in traffic.users]
        before = await timeline_sizes(running.redis.url, users)
        assert all(before), "followers' timelines were never built"
        await asyncio.to_thread(running.redis.restart, DOWN_SECONDS)
        after = await timeline_sizes(running.redis.url, users)
        assert all(a >= b for a, b in zip(after, before, strict=True)), (
            "timelines lost in the restart"
        )
        await traffic.posts_made(5)  # posting goes on after the restart
        await traffic.stop_and_check()
        told_to_resume = sum(f.closes[4010] for f in traffic.followers)
        assert told_to_resume >= CLIENTS, "the restart never reached the live clients"
    # A Redis restart is not a service's death: run.py had nothing to restart.
    assert " exited (" not in running.output(), running.output()[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_run_restarts_each_killed_service_under_live_traffic(
    supervised: Supervised,
) -> None:
    running = supervised
    assert Counter(running.children().values()) == MODULES
    output = running.output()
    # Dependency order: the API server is ready before a gateway starts, and those
    # before the workers.
    assert output.index("server1 ready in") < output.index("gateway1, gateway2 ready in")
    assert output.index("gateway1, gateway2 ready in") < output.index("fanout, push ready in")
    async with live_traffic(running, CLIENTS) as traffic:
        for module in VICTIMS:
            await kill_and_see_it_back(running, traffic, module)
        await traffic.stop_and_check()
    assert "crash-looping" not in running.output()
    assert running.output().count(" restarted (restart ") == len(VICTIMS)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_run_stops_every_service_it_ever_started(supervised: Supervised) -> None:
    """After the test above: the services it restarted are stopped too."""
    await stop_and_see_everything_gone(supervised)


async def stop_and_see_everything_gone(running: Supervised) -> None:
    assert running.proc.poll() is None, running.output()[-4000:]
    children = running.children()
    running.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(running.proc.wait, 60)
    output = running.output()
    assert code == 0, output[-4000:]
    assert "run: stopping services..." in output
    left = {pid: m for pid, m in running.seen.items() if still_running(pid, m)}
    assert not left, f"left behind: {left} (children at the end: {children})"


def hold_port(port: int) -> socket.socket:
    """Listens on `port` as soon as the process that had it is gone."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:
            sock.close()
            assert time.monotonic() < deadline, f"port {port} never came free"
            time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_service_that_keeps_failing_is_reported_as_crash_looping_until_it_is_back(
    fresh_supervised: Supervised,
) -> None:
    running = fresh_supervised
    before = running.children()
    (victim,) = [pid for pid, module in before.items() if module == "fanout"]
    os.kill(victim, signal.SIGKILL)
    # Its port taken: every new fan-out worker exits at start-up ("port ... in use").
    blocker = hold_port(running.ports["fanout"])
    try:

        async def looping() -> bool:
            return "run: fanout is crash-looping: 5 exits in 60 s, last: exit code 1" in (
                running.output()
            )

        await eventually(looping, seconds=120, what="the crash loop reported")
    finally:
        blocker.close()

    async def back() -> bool:
        return (
            re.search(r"run: fanout restarted \(restart \d+\), ready in", running.output())
            is not None
        )

    await eventually(back, seconds=60, what="fanout back once its port is free")
    output = running.output()
    assert "fanout   | fanout: error: port" in output  # its own reason, behind its name
    delays = [
        float(d) for d in re.findall(r"run: fanout exited .*; restart \d+ in ([\d.]+) s", output)
    ]
    assert len(delays) == 4 and delays == sorted(delays), delays  # backing off
    others = {pid: module for pid, module in before.items() if pid != victim}
    now = running.children()
    assert {p: m for p, m in now.items() if m != "fanout"} == others
    assert list(now.values()).count("fanout") == 1
    await stop_and_see_everything_gone(running)
