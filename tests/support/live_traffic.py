"""Live traffic against the whole system as `make run` runs it, for tests that break
things underneath: scripts/run.py over real services (a Redis of its own, so a test may
restart it), a poster, and WebSocket followers that resume with ?since= after any close,
each recording what it received. The checks: every follower got every post exactly
once, and every follower's feed holds each post once.

The followers' accounts are made straight in Postgres (what POST /v1/users stores, with
the token it would answer): none of them ever signs in, and two hundred argon2 hashes
would only keep the one API server busy before the test begins. They follow the author,
and everything after, through the API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from core import keys
from core.auth import TokenSigner
from core.ids import IdLease, min_id_for_ms
from core.settings import Settings
from scripts.supervise.procs import port_free
from tests.support.api import User, new_handle
from tests.support.env import ROOT, free_port, settings_env
from tests.support.private_redis import PrivateRedis, private_redis
from tests.support.wait import eventually

POST_EVERY = 0.5
# run.py's first restart delay here (make run: 0.5 s, doubling): a test waits for every
# restart it causes, and the back-off it checks is the doubling, not its first step.
RESTART_FIRST_DELAY = 0.1
MAX_POSTS = 250  # one author may post 300 times in 3 hours
MODULES = {"server": 1, "gateway": 2, "fanout": 1, "push": 1}  # processes of each
NODE_PORT_STEP = 100  # scripts/run.py's: process n of a service on its port + 100*n


@dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]
    redis: PrivateRedis
    settings: Settings  # what its services were given (their Redis aside)
    seen: dict[int, str] = field(default_factory=dict)  # every child pid -> its module
    # Every process's port, by module (with SEPARATE_PORTS one each; else shared).
    nodes: dict[str, list[int]] = field(default_factory=dict)

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
        time.sleep(0.05)


def node_ports(processes: Mapping[str, int], separate: bool) -> dict[str, list[int]]:
    """Free ports for run.py: each module's first port, and with `separate` (or for
    fan-out and push, which cannot share one) the next processes' at run.py's step."""
    found: dict[str, list[int]] = {}
    taken: set[int] = set()
    for module, count in processes.items():
        own = separate or module in ("fanout", "push")
        wanted = count if own else 1
        while True:
            base = free_port()
            ports = [base + NODE_PORT_STEP * n for n in range(wanted)]
            if not taken & set(ports) and all(port_free(p) for p in ports[1:]):
                break
        taken.update(ports)
        found[module] = ports if own else ports * count
    return found


@contextlib.contextmanager
def supervised_system(
    settings: Settings,
    tmp_path: Path,
    processes: Mapping[str, int] = MODULES,
    separate_ports: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Supervised]:
    """scripts/run.py with `processes` of each module (MODULES unless told), ready, on
    free ports and a private Redis; `separate_ports`: every process on a port of its
    own, as on machines of their own (run.py's SEPARATE_PORTS)."""
    nodes = node_ports(processes, separate_ports)
    ports = {name: found[0] for name, found in nodes.items()}
    tag = uuid.uuid4().hex[:8]
    env = settings_env(settings)
    env.update(
        SERVER_PORT=str(ports["server"]),
        GATEWAY_PORT=str(ports["gateway"]),
        FANOUT_PORT=str(ports["fanout"]),
        PUSH_PORT=str(ports["push"]),
        SERVER_PROCESSES=str(processes["server"]),
        GATEWAY_PROCESSES=str(processes["gateway"]),
        FANOUT_PROCESSES=str(processes["fanout"]),
        PUSH_PROCESSES=str(processes["push"]),
        SEPARATE_PORTS="true" if separate_ports else "false",
        GATEWAY_CONNECTS_PER_IP="1000000",  # every client connects from 127.0.0.1
        FANOUT_GROUP=f"fanout-{tag}",  # groups of our own: no rebalance with other runs
        PUSH_GROUP=f"push-{tag}",
        PUSH_OFFSET_RESET="latest",  # nothing to push here; skip the topic's history
        READY_TIMEOUT="90",
        RESTART_FIRST_DELAY=str(RESTART_FIRST_DELAY),
    )
    # Gateways resume through this run's API servers (run.py: gateway n through server n).
    env.pop("GATEWAY_API_URL", None)
    env.update(extra_env or {})
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
        running = Supervised(proc, log, ports, redis_server, settings, nodes=nodes)
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
    url: str = ""  # the gateway it connects to

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
    return await call_any(session, method, [url], expect, **kwargs)


async def call_any(
    session: aiohttp.ClientSession, method: str, urls: Sequence[str], expect: int, **kwargs: Any
) -> Any:
    """`call` to the same resource on several API servers: after a connection error or
    a 5xx the next is tried, as a load balancer does when a node dies."""
    deadline = time.monotonic() + 90
    for url in itertools.cycle(urls):
        try:
            async with session.request(method, url, **kwargs) as resp:
                if resp.status == expect:
                    return await resp.json()
                assert resp.status >= 500, f"{method} {url}: {resp.status} {await resp.text()}"
        except (aiohttp.ClientConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"{method} {url} kept failing"
        await asyncio.sleep(0.2)
    raise AssertionError("no URL to call")


async def sign_up(session: aiohttp.ClientSession, base: str) -> User:
    body = {"handle": new_handle("sv"), "password": "correct horse"}
    answer = await call(session, "POST", f"{base}/v1/users", 201, json=body)
    return User(answer["user_id"], answer["handle"], answer["token"])


async def made_in_postgres(settings: Settings, count: int) -> list[User]:
    """`count` accounts as POST /v1/users makes them, but for the password hash."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        lease = IdLease(pool, holder=f"live-traffic:{os.getpid()}")
        ids = await lease.acquire()
        try:
            accounts = [(ids.next_id(), new_handle("sv")) for _ in range(count)]
        finally:
            await lease.release()
        await pool.copy_records_to_table(
            "users",
            columns=["id", "handle", "display_name", "password_hash"],
            records=[(user, handle, handle, "seeded, never signs in") for user, handle in accounts],
        )
    finally:
        await pool.close()
    signer = TokenSigner(settings.secret_key, settings.token_ttl_seconds)
    return [User(str(user), handle, signer.issue(user)) for user, handle in accounts]


async def keep_posting(
    session: aiohttp.ClientSession,
    base: str,
    author: User,
    posted: list[str],
    stop: asyncio.Event,
    bases: Sequence[str] = (),
) -> None:
    """Posts until `stop`, through `base` or each of `bases` in turn; never cancelled
    mid-post, whose 201 would be lost."""
    while len(posted) < MAX_POSTS and not stop.is_set():
        # The same key on every retry: a post whose 201 was lost is not made twice.
        body = {"text": f"supervised {len(posted)}", "idempotency_key": uuid.uuid4().hex}
        # Each server in turn; a dead one's post (same key) goes to the next.
        turn = len(posted) % len(bases) if bases else 0
        urls = [f"{b}/v1/posts" for b in [*bases[turn:], *bases[:turn]]] if bases else []
        answer = await call_any(
            session, "POST", urls or [f"{base}/v1/posts"], 201, json=body, headers=author.auth
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


async def everyone_has(followers: list[Follower], posted: list[str], seconds: float) -> None:
    """Waits, bounded, until every follower has every post; the caller asserts."""
    deadline = time.monotonic() + seconds
    wanted = set(posted)
    while time.monotonic() < deadline:
        if all(wanted <= set(f.posts) for f in followers):
            return
        await asyncio.sleep(0.05)


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


@dataclass
class Traffic:
    """One author posting every POST_EVERY seconds to `clients` followers, each on its
    own WebSocket; see `live_traffic`."""

    base: str
    api: aiohttp.ClientSession
    author: User
    users: list[User]
    followers: list[Follower]
    posted: list[str]
    enough: asyncio.Event
    poster: asyncio.Task[None]
    running: Supervised

    async def everyone_live(self) -> None:
        async def all_live() -> bool:
            return bool(self.posted) and all(self.posted[0] in f.posts for f in self.followers)

        await eventually(all_live, seconds=60, what="every follower getting the first post")

    async def posts_made(self, more: int) -> None:
        count = len(self.posted)

        async def posting() -> bool:
            return len(self.posted) >= count + more

        await eventually(posting, seconds=90, what=f"{more} more posts made")

    async def feeds(self) -> list[list[str]]:
        """Every follower's whole home feed (reading it builds its Redis timeline)."""
        gate = asyncio.Semaphore(16)

        async def feed_of(user: User) -> list[str]:
            async with gate:
                return await whole_feed(self.api, self.base, user)

        return list(await asyncio.gather(*(feed_of(user) for user in self.users)))

    async def stop_and_check(self) -> None:
        """Stops posting; then every follower has every post once, live and in its feed."""
        self.enough.set()
        await self.poster
        await everyone_has(self.followers, self.posted, seconds=90)
        await asyncio.sleep(1)  # a repeat would come right behind
        problems = delivery_problems(self.followers, self.posted)
        closes = sum((f.closes for f in self.followers), Counter[int | None]())
        failed = sum(f.failed_connects for f in self.followers)
        assert not problems, (
            f"{len(self.posted)} posts; closes {dict(closes)}, failed connects {failed}: "
            f"{problems}\n{await self.diagnosis()}"
        )
        # A live client can be ahead of the feeds: after an outage its resume is answered
        # from Postgres while fan-out is still catching up with the timelines. The feeds
        # must agree once it has (bounded), not at the instant the last post arrived live.
        wanted = Counter(self.posted)
        deadline = time.monotonic() + 30
        while True:
            feeds = await self.feeds()
            wrong = {
                u.handle: {
                    "missing": sorted(wanted - Counter(feed)),
                    "extra": sorted(Counter(feed) - wanted),
                }
                for u, feed in zip(self.users, feeds, strict=True)
                if Counter(feed) != wanted
            }
            if not wrong or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert not wrong, (
            f"{len(wrong)} feeds do not hold each post once, e.g. {dict(list(wrong.items())[:3])}"
            f"\n{await self.diagnosis()}"
        )

    async def diagnosis(self) -> str:
        """For a failure: where each missing post is for a few followers who lack it (in
        their Redis timeline? are they online in presence? which gateway?), and what the
        services warned about; a rare loss is otherwise unexplainable after the fact."""
        client = aioredis.Redis.from_url(self.running.redis.url)
        lines = [f"posts in order: {self.posted}"]
        try:
            for f in [f for f in self.followers if set(self.posted) - set(f.posts)][:5]:
                user = int(f.user.id)
                lost = sorted(set(self.posted) - set(f.posts))
                scores = [
                    await client.zscore(keys.timeline(user), keys.timeline_member(int(p)))
                    for p in lost
                ]
                online = await client.smembers(keys.presence(user))
                lines.append(
                    f"{f.user.handle} on {f.url}: lost {lost}, in its timeline "
                    f"{[s is not None for s in scores]}, online at {sorted(online)}, "
                    f"received {f.posts}"
                )
        except redis.exceptions.RedisError as exc:
            lines.append(f"Redis not asked: {exc}")
        finally:
            await client.aclose()
        said = self.running.output().splitlines()
        lines += [line for line in said if _tells(line)][-120:]
        return "\n".join(lines)


# What the services log about a loss: links, resumes, fan-outs, recoveries; not the
# once-a-second repeats while Redis is away.
_TELLING = ("WARNING", "ERROR", "fanned out", "re-established", "answers again", "resum")
_REPEATS = ("stats not reported", "reconnect failed", "not written (", "failing fast")


def _tells(line: str) -> bool:
    return any(w in line for w in _TELLING) and not any(r in line for r in _REPEATS)


@contextlib.asynccontextmanager
async def live_traffic(running: Supervised, clients: int) -> AsyncIterator[Traffic]:
    """Posts through each API server in turn, followers spread over the gateways (with
    SEPARATE_PORTS; else the one port each shares)."""
    base = f"http://127.0.0.1:{running.ports['server']}"
    servers = running.nodes.get("server", [running.ports["server"]])
    gateways = running.nodes.get("gateway", [running.ports["gateway"]])
    bases = [f"http://127.0.0.1:{port}" for port in dict.fromkeys(servers)]
    streams = [f"ws://127.0.0.1:{port}/v1/stream" for port in dict.fromkeys(gateways)]
    api = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
    live = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks: list[asyncio.Task[None]] = []
    try:
        author = await sign_up(api, base)
        gate = asyncio.Semaphore(16)

        async def new_follower(user: User) -> User:
            async with gate:
                await call(
                    api, "POST", f"{base}/v1/users/{author.id}/follow", 200, headers=user.auth
                )
                return user

        accounts = await made_in_postgres(running.settings, clients)
        users = list(await asyncio.gather(*(new_follower(user) for user in accounts)))
        # Every client resumes from the start, so none misses a post made before its
        # first connection was subscribed.
        start = min_id_for_ms(int(time.time() * 1000))
        followers = [
            Follower(user, start, url=streams[n % len(streams)]) for n, user in enumerate(users)
        ]
        tasks = [asyncio.create_task(f.listen(live, f.url)) for f in followers]
        posted: list[str] = []
        enough = asyncio.Event()
        poster = asyncio.create_task(keep_posting(api, base, author, posted, enough, bases))
        tasks.append(poster)
        traffic = Traffic(base, api, author, users, followers, posted, enough, poster, running)
        await traffic.everyone_live()
        yield traffic
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await live.close()
