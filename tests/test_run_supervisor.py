"""scripts/run.py as people run it: the real supervisor over real services on the test
stack. Under live traffic (a poster, WebSocket followers that resume with ?since=) each
kind of service is SIGKILLed in turn and must come back by itself while the others keep
running, and no follower misses or repeats a post. Plus the restart bookkeeping alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from core.ids import min_id_for_ms
from core.settings import Settings
from scripts.supervise.probe import listens
from scripts.supervise.restarts import RestartPolicy, Restarts, exit_reason
from tests.support.api import User, new_handle
from tests.support.env import ROOT, free_port, settings_env
from tests.support.private_redis import private_redis
from tests.support.wait import eventually

CLIENTS = 200  # the number; 20 will do while changing this test
POST_EVERY = 0.5
MAX_POSTS = 250  # one author may post 300 times in 3 hours
VICTIMS = ("fanout", "gateway", "push", "server")  # killed in this order
MODULES = {"server": 1, "gateway": 2, "fanout": 1, "push": 1}  # processes of each


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


# -- run.py, its children and live traffic ---------------------------------------------


@dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]
    seen: dict[int, str] = field(default_factory=dict)  # every child pid -> its module

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        found = children_of(self.proc.pid)
        self.seen.update(found)
        return found


def process_module(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, module) of a `python -m module` process; None for others."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    state, parent = stat.rsplit(")", 1)[1].split()[:2]
    if b"-m" not in argv[:-1]:
        return None
    return int(parent), state, argv[argv.index(b"-m") + 1].decode()


def children_of(parent: int) -> dict[int, str]:
    """pid -> module of the living (not zombie) `python -m` children of `parent`."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := process_module(int(entry))) is not None:
            ppid, state, module = info
            if ppid == parent and state != "Z":
                found[int(entry)] = module
    return found


def still_running(pid: int, module: str) -> bool:
    info = process_module(pid)
    return info is not None and info[1] != "Z" and info[2] == module


def wait_for_text(supervised: Supervised, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in supervised.output():
        if supervised.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"run.py never said {text!r}:\n{supervised.output()[-6000:]}")
        time.sleep(0.2)


@pytest.fixture
def supervised(settings: Settings, tmp_path: Path) -> Iterator[Supervised]:
    ports = {name: free_port() for name in MODULES}
    tag = uuid.uuid4().hex[:8]
    env = settings_env(settings)
    env.update(
        SERVER_PORT=str(ports["server"]),
        GATEWAY_PORT=str(ports["gateway"]),
        FANOUT_PORT=str(ports["fanout"]),
        PUSH_PORT=str(ports["push"]),
        SERVER_PROCESSES="1",
        GATEWAY_PROCESSES="2",
        GATEWAY_API_URL=f"http://127.0.0.1:{ports['server']}",
        GATEWAY_CONNECTS_PER_IP="1000000",  # every client connects from 127.0.0.1
        FANOUT_GROUP=f"fanout-{tag}",  # groups of our own: no rebalance with other runs
        PUSH_GROUP=f"push-{tag}",
        PUSH_OFFSET_RESET="latest",  # nothing to push here; skip the topic's history
        READY_TIMEOUT="90",
    )
    log = tmp_path / "run.log"
    # A Redis of its own: another test run starting on this machine flushes the shared
    # test db (presence and timelines gone: live posts dropped as if everyone were
    # offline), and a resilience test kills every pub/sub link on the server.
    with private_redis(tmp_path) as redis_server, log.open("wb") as out:
        env["REDIS_URL"] = redis_server.url
        # A file, not a pipe: run.py never blocks on its output.
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run.py"), "--keep-stack"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        running = Supervised(proc, log, ports)
        try:
            wait_for_text(running, "all services ready", 150)
            running.children()
            yield running
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for pid, module in running.seen.items():  # never leave a service behind
                if still_running(pid, module):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Follower:
    """A WebSocket client that resumes from the newest post it saw after any close."""

    user: User
    since: int
    posts: list[str] = field(default_factory=list)
    resets: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)
    failed_connects: int = 0

    async def listen(self, session: aiohttp.ClientSession, url: str) -> None:
        while True:
            params = {"access_token": self.user.token, "since": str(self.since)}
            try:
                async with session.ws_connect(url, params=params) as ws:
                    async for message in ws:
                        if message.type is aiohttp.WSMsgType.TEXT:
                            self.receive(orjson.loads(message.data))
                    self.closes[ws.close_code] += 1
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.failed_connects += 1
            await asyncio.sleep(0.2 + random.random() * 0.3)

    def receive(self, event: dict[str, Any]) -> None:
        if event.get("type") == "post":
            self.posts.append(str(event["id"]))
            self.since = max(self.since, int(event["id"]))
        elif event.get("type") == "reset":
            self.resets += 1


async def call(
    session: aiohttp.ClientSession, method: str, url: str, expect: int, **kwargs: Any
) -> Any:
    """One API call that must succeed; connection errors and 5xx (a service coming
    back) are retried for a bounded time, anything else fails the test."""
    deadline = time.monotonic() + 90
    while True:
        try:
            async with session.request(method, url, **kwargs) as resp:
                if resp.status == expect:
                    return await resp.json()
                assert resp.status >= 500, f"{method} {url}: {resp.status} {await resp.text()}"
        except (aiohttp.ClientConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"{method} {url} kept failing"
        await asyncio.sleep(0.2)


async def sign_up(session: aiohttp.ClientSession, base: str) -> User:
    body = {"handle": new_handle("sv"), "password": "correct horse"}
    answer = await call(session, "POST", f"{base}/v1/users", 201, json=body)
    return User(answer["user_id"], answer["handle"], answer["token"])


async def keep_posting(
    session: aiohttp.ClientSession,
    base: str,
    author: User,
    posted: list[str],
    stop: asyncio.Event,
) -> None:
    """Posts until `stop`; never cancelled mid-post, whose 201 would be lost."""
    while len(posted) < MAX_POSTS and not stop.is_set():
        # The same key on every retry: a post whose 201 was lost is not made twice.
        body = {"text": f"supervised {len(posted)}", "idempotency_key": uuid.uuid4().hex}
        answer = await call(
            session, "POST", f"{base}/v1/posts", 201, json=body, headers=author.auth
        )
        posted.append(answer["post_id"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POST_EVERY)


async def whole_feed(session: aiohttp.ClientSession, base: str, user: User) -> list[str]:
    ids: list[str] = []
    params = {"limit": "100"}
    for _ in range(100):
        page = await call(session, "GET", f"{base}/v1/feed", 200, params=params, headers=user.auth)
        ids += [p["id"] for p in page["posts"]]
        if not page["has_more"]:
            return ids
        params = {"limit": "100", "cursor": page["next_cursor"]}
    raise AssertionError("the feed never ended")


async def answers_ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def kill_and_see_it_back(
    running: Supervised, session: aiohttp.ClientSession, module: str, posted: list[str]
) -> None:
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
            and await answers_ready(session, running.ports[module])
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
    count = len(posted)

    async def posting() -> bool:  # the API answers again, and the poster goes on
        return len(posted) >= count + 3

    await eventually(posting, seconds=90, what="posts made after the restart")


async def everyone_has(followers: list[Follower], posted: list[str], seconds: float) -> None:
    """Waits, bounded, until every follower has every post; the caller asserts."""
    deadline = time.monotonic() + seconds
    wanted = set(posted)
    while time.monotonic() < deadline:
        if all(wanted <= set(f.posts) for f in followers):
            return
        await asyncio.sleep(0.2)


def delivery_problems(followers: list[Follower], posted: list[str]) -> dict[str, object]:
    once = Counter(posted)
    missing, repeated, resets = {}, {}, {}
    for f in followers:
        got = Counter(f.posts)
        if lost := sorted(set(once) - set(got)):
            missing[f.user.handle] = lost
        if twice := sorted(p for p, n in got.items() if n > 1 or p not in once):
            repeated[f.user.handle] = twice  # or not posted at all
        if f.resets:
            resets[f.user.handle] = f.resets
    problems: dict[str, object] = {}
    for name, found in (("missing", missing), ("repeated", repeated), ("reset", resets)):
        if found:
            problems[name] = f"{len(found)} followers, e.g. {dict(list(found.items())[:3])}"
    return problems


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_run_restarts_each_killed_service_under_live_traffic(
    supervised: Supervised,
) -> None:
    running = supervised
    base = f"http://127.0.0.1:{running.ports['server']}"
    stream = f"ws://127.0.0.1:{running.ports['gateway']}/v1/stream"
    assert Counter(running.children().values()) == MODULES
    output = running.output()
    # Dependency order: the API server is ready before a gateway starts, and those
    # before the workers.
    assert output.index("server1 ready in") < output.index("gateway1, gateway2 ready in")
    assert output.index("gateway1, gateway2 ready in") < output.index("fanout, push ready in")

    api = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    live = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks: list[asyncio.Task[None]] = []
    try:
        author = await sign_up(api, base)
        gate = asyncio.Semaphore(16)

        async def new_follower() -> User:
            async with gate:
                user = await sign_up(api, base)
                await call(
                    api, "POST", f"{base}/v1/users/{author.id}/follow", 200, headers=user.auth
                )
                return user

        users = await asyncio.gather(*(new_follower() for _ in range(CLIENTS)))
        # Every client resumes from the start, so none misses a post made before its
        # first connection was subscribed.
        start = min_id_for_ms(int(time.time() * 1000))
        followers = [Follower(user, start) for user in users]
        tasks = [asyncio.create_task(f.listen(live, stream)) for f in followers]
        posted: list[str] = []
        enough = asyncio.Event()
        poster = asyncio.create_task(keep_posting(api, base, author, posted, enough))
        tasks.append(poster)

        async def all_live() -> bool:
            return bool(posted) and all(posted[0] in f.posts for f in followers)

        await eventually(all_live, seconds=60, what="every follower getting the first post")
        for module in VICTIMS:
            await kill_and_see_it_back(running, api, module, posted)
        enough.set()
        await poster
        await everyone_has(followers, posted, seconds=90)
        await asyncio.sleep(1)  # a repeat would come right behind
        problems = delivery_problems(followers, posted)
        closes = sum((f.closes for f in followers), Counter[int | None]())
        failed = sum(f.failed_connects for f in followers)
        assert not problems, (
            f"{len(posted)} posts; closes {dict(closes)}, failed connects {failed}: {problems}"
        )

        async def feed_of(user: User) -> list[str]:
            async with gate:
                return await whole_feed(api, base, user)

        feeds = await asyncio.gather(*(feed_of(user) for user in users))
        wrong = [
            u.handle
            for u, feed in zip(users, feeds, strict=True)
            if Counter(feed) != Counter(posted)
        ]
        assert not wrong, f"{len(wrong)} feeds do not hold each post once: {wrong[:5]}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await live.close()

    assert "crash-looping" not in running.output()
    assert running.output().count(" restarted (restart ") == len(VICTIMS)
    await stop_and_see_everything_gone(running)


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
    supervised: Supervised,
) -> None:
    running = supervised
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
