"""Open-loop HTTP load generator, run in a process of its own (never in the server's).

Requests are scheduled at a fixed rate whatever the responses do, and each latency is
measured from the request's *scheduled* send time, so a stalled server shows up as
latency instead of silently lowering the offered load (coordinated omission). The loop
wakes about once a millisecond and sends everything due; that dispatch lag is part of the
latency and is reported on its own so it can be told apart from the server's share.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import aiohttp
import orjson
import uvloop

TICK = 0.001
PROGRESS_EVERY = 5.0  # seconds between progress lines on stderr
# Timestamps come from time.perf_counter(): uvloop's loop.time() only has millisecond
# resolution, which would round every latency to a whole millisecond.


@dataclass(frozen=True, slots=True)
class Plan:
    base_url: str
    path: str  # e.g. "/v1/feed?limit=20"
    tokens: list[str]  # one per user; each request picks one at random
    rate: float  # requests per second, offered
    warmup: float  # seconds sent but not measured
    duration: float  # seconds measured
    connections: int  # client connection pool size
    second_page_share: float = 0.0  # share of measured requests that ask for page 2
    timeout: float = 10.0
    max_inflight: int = 20_000  # beyond this the client itself is overloaded: shed, counted
    seed: int = 7
    slow_after: float = 0.010  # measured requests slower than this are also listed in `slow`


@dataclass(slots=True)
class Result:
    offered_rate: float
    duration: float
    scheduled: int = 0  # measured requests scheduled
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", ...
    lag: list[float] = field(default_factory=list)  # dispatch lag of measured requests
    last_done: float = 0.0  # seconds after the window opened when the last one finished
    warm_pages: int = 0
    warm_posts: int = 0
    warm_errors: int = 0
    client_cpu: float = 0.0  # user+system seconds of this process over the whole run
    window_start: float = 0.0  # Unix time the measured window opened
    # (scheduled seconds after window_start, latency) of each request over plan.slow_after:
    # when the tail happened, to lay against what the machine did then
    slow: list[tuple[float, float]] = field(default_factory=list)


class _Run:
    """State of one run: the session, the cursors learnt in warm-up, the result."""

    def __init__(self, plan: Plan, session: aiohttp.ClientSession, loop_start: float) -> None:
        self.plan = plan
        self.session = session
        self.window_start = loop_start + plan.warmup
        self.window_end = self.window_start + plan.duration
        self.headers = [{"Authorization": f"Bearer {t}"} for t in plan.tokens]
        self.cursors: dict[int, str] = {}
        self.learnt: list[int] = []  # users with a cursor, for page-2 picks
        self.result = Result(plan.rate, plan.duration)
        self.rng = random.Random(plan.seed)  # noqa: S311 - load pattern, not security

    def pick(self) -> tuple[int, str, str]:
        """(user index, kind, url) of the next request."""
        url = self.plan.base_url + self.plan.path
        share = self.plan.second_page_share
        # Page 2 goes to a user whose cursor was learnt from a warm-up page 1 (only some
        # users were seen then), so the share holds whatever the warm-up covered. Warm-up
        # asks for second pages too, once it has cursors: the mix the window measures is
        # then already running when it opens, instead of starting with a burst of them.
        if self.learnt and share > 0 and self.rng.random() < share:
            user = self.rng.choice(self.learnt)
            return user, "page2", f"{url}&cursor={self.cursors[user]}"
        return self.rng.randrange(len(self.headers)), "page1", url

    async def one(self, user: int, kind: str, url: str, scheduled: float) -> None:
        measured = scheduled >= self.window_start
        if measured:
            self.result.lag.append(time.perf_counter() - scheduled)
        try:
            async with self.session.get(url, headers=self.headers[user]) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            self.failed(measured, "timeout")
            return
        except aiohttp.ClientError as exc:
            self.failed(measured, type(exc).__name__)
            return
        done = time.perf_counter()
        if measured:
            self.result.outcomes[str(status)] += 1
            self.result.latencies.setdefault(kind, []).append(done - scheduled)
            if done - scheduled > self.plan.slow_after:
                self.result.slow.append((scheduled - self.window_start, done - scheduled))
            self.result.last_done = max(self.result.last_done, done - self.window_start)
        elif status != 200:
            self.result.warm_errors += 1
        elif kind == "page1":  # a page 2's cursor leads to page 3
            self._learn(user, body)

    def failed(self, measured: bool, outcome: str) -> None:
        if measured:
            self.result.outcomes[outcome] += 1
        else:
            self.result.warm_errors += 1

    def _learn(self, user: int, body: bytes) -> None:
        # Warm-up responses are parsed (measured ones are not, to keep the client cheap):
        # they prove pages are full and give each user a real page-2 cursor.
        page = orjson.loads(body)
        self.result.warm_pages += 1
        self.result.warm_posts += len(page.get("posts", []))
        if page.get("next_cursor"):
            if user not in self.cursors:
                self.learnt.append(user)
            self.cursors[user] = page["next_cursor"]


def _progress(run: _Run, start: float, sent: int, inflight: int) -> None:
    plan = run.plan
    phase = "measuring" if time.perf_counter() >= run.window_start else "warm-up"
    sys.stderr.write(
        f"loadgen: {time.perf_counter() - start:4.0f}/{plan.warmup + plan.duration:.0f} s "
        f"({phase}) sent {sent:,} at {plan.rate:,.0f}/s, in flight {inflight:,}\n"
    )
    sys.stderr.flush()


async def _schedule(run: _Run, start: float, conn: Connection) -> set[asyncio.Task[None]]:
    """Fire requests at their scheduled times; return the tasks still running."""
    plan = run.plan
    total = int((plan.warmup + plan.duration) * plan.rate)
    inflight: set[asyncio.Task[None]] = set()
    window_open = False
    sent = 0
    next_report = start + PROGRESS_EVERY
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * plan.rate) + 1)
        for i in range(sent, due):
            scheduled = start + i / plan.rate
            measured = scheduled >= run.window_start
            if measured and not window_open:
                window_open = True
                conn.send(("window", "start"))
            run.result.scheduled += measured
            if len(inflight) >= plan.max_inflight:
                run.failed(measured, "shed")
                continue
            user, kind, url = run.pick()
            task = asyncio.create_task(run.one(user, kind, url, scheduled))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        sent = due
        if time.perf_counter() >= next_report:
            next_report += PROGRESS_EVERY
            _progress(run, start, sent, len(inflight))
        # Never less than a tick: a zero sleep would spin and steal the server's CPU.
        await asyncio.sleep(max(TICK, start + sent / plan.rate - time.perf_counter()))
    conn.send(("window", "end"))
    return inflight


async def _run(plan: Plan, conn: Connection) -> Result:
    connector = aiohttp.TCPConnector(limit=plan.connections, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.1
        run = _Run(plan, session, start)
        run.result.window_start = time.time() + (run.window_start - time.perf_counter())
        await asyncio.sleep(0.1)
        inflight = await _schedule(run, start, conn)
        if inflight:
            # Every request has an owner: wait for the stragglers (each bounded by timeout).
            await asyncio.gather(*inflight)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run.result.client_cpu = usage.ru_utime + usage.ru_stime
    return run.result


def run_in_process(plan: Plan, conn: Connection) -> None:
    """Entry point of the load generator process: results go back over `conn`."""
    result = uvloop.run(_run(plan, conn))
    conn.send(("result", result))
    conn.close()
