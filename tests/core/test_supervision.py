"""Supervision of long-lived tasks (core/supervision.py): real asyncio tasks restarted
with back-off, counted and shown on /readyz; a STOP_PROCESS child stopping its process
(in this process, by a real SIGTERM, and in a real service process); and the API
server's outbox relay killed by an injected fault, restarted, losing no post."""

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaConsumer, TopicPartition

from core import events
from core.clients import kafka_common
from core.service import OPS, Ops, add_ops_routes
from core.settings import Settings
from core.supervision import SUPERVISOR, Backoff, Child, Policy, Supervisor
from core.topics import Topics
from server.app import OUTBOX_RELAY, create_app
from tests.support.api import MakeClient, post, sign_up
from tests.support.api_server import ApiServer
from tests.support.env import ROOT, settings_env
from tests.support.wait import eventually

Client = TestClient[web.Request, web.Application]


def restarts(ops: Ops, task: str) -> float:
    value = ops.registry.get_sample_value("feed_task_restarts_total", {"task": task})
    return value or 0.0


def supervised_delays(caplog: pytest.LogCaptureFixture, task: str) -> list[float]:
    """The back-off of each restart, as logged ("... restarting in %.1f s")."""
    return [
        float(cast(float, r.args[-1]))  # the %.1f argument
        for r in caplog.records
        if r.name == "core.supervision" and isinstance(r.args, tuple) and r.args[0] == task
    ]


@pytest.fixture
async def ops_app(aiohttp_client: MakeClient) -> tuple[Ops, Client]:
    """An app that serves only the ops routes of an Ops the tests supervise tasks into."""
    app = web.Application()
    ops = app[OPS] = Ops("test", "test-node")
    add_ops_routes(app)
    return ops, await aiohttp_client(app)


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_child_that_raises_is_down_on_readyz_then_restarted_and_counted(
    ops_app: tuple[Ops, Client], caplog: pytest.LogCaptureFixture
) -> None:
    ops, client = ops_app
    runs = 0
    restarted = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        restarted.set()
        await forever()

    supervisor = Supervisor(ops, delays=(1.0,))
    async with supervisor.running(Child("flaky", flaky), Child("steady", forever)):

        async def down() -> bool:
            resp = await client.get("/readyz")
            body = await resp.json()
            return resp.status == 503 and body["checks"]["task:flaky"] != "ok"

        await eventually(down, seconds=10, what="the dead child on /readyz")
        body = await (await client.get("/readyz")).json()
        assert body["checks"] == {
            "task:flaky": "down: RuntimeError: first run fails",
            "task:steady": "ok",
        }
        await asyncio.wait_for(restarted.wait(), 10)
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert (await resp.json())["checks"] == {"task:flaky": "ok", "task:steady": "ok"}
        metrics = await (await client.get("/metrics")).text()
        assert 'feed_task_restarts_total{task="flaky"} 1.0' in metrics
        # Every supervised task has its series from the start (0), for rate() and alerts.
        assert 'feed_task_restarts_total{task="steady"} 0.0' in metrics
    assert ops.checks == []  # stopped children leave /readyz
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # with its traceback
    assert "task flaky died" in errors[0].getMessage()


async def test_back_off_grows_with_each_failure_and_a_child_that_returns_is_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = Ops("test", "test-node")
    runs = 0
    running = asyncio.Event()

    async def failing_three_times() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            return  # returning is dying too: a long-lived task has no business ending
        running.set()
        await forever()

    # Jitter is ±20%: these ranges do not overlap, so the order is certain.
    supervisor = Supervisor(ops, delays=(0.05, 0.2, 0.8))
    async with supervisor.running(Child("returner", failing_three_times)):
        await asyncio.wait_for(running.wait(), 20)
    assert sum("(returned)" in r.getMessage() for r in caplog.records) == 3
    delays = supervised_delays(caplog, "returner")
    assert len(delays) == 3 and delays == sorted(delays) and len(set(delays)) == 3
    assert restarts(ops, "returner") == 3


def test_backoff_caps_at_its_last_delay_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff((1.0, 2.0, 4.0), stable_seconds=60.0, jitter=0.2)
    quick = [backoff.next(ran_seconds=0.1) for _ in range(5)]
    for delay, base in zip(quick, (1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert 0.8 <= backoff.next(ran_seconds=61.0) <= 1.2  # ran stably: back to the first
    assert 1.6 <= backoff.next(ran_seconds=0.1) <= 2.4


async def test_leaving_running_by_cancellation_cancels_and_awaits_every_child() -> None:
    ops = Ops("test", "test-node")
    started: set[str] = set()
    stopped: list[str] = []

    def child(name: str) -> Child:
        async def run() -> None:
            started.add(name)
            try:
                await forever()
            finally:
                stopped.append(name)

        return Child(name, run)

    async def failing() -> None:
        raise RuntimeError("waits in back-off when cancelled")

    supervisor = Supervisor(ops, delays=(30.0,))

    async def owner() -> None:
        async with supervisor.running(child("a"), child("b"), Child("failing", failing)):
            await forever()

    task = asyncio.create_task(owner())

    async def all_started() -> bool:
        return started == {"a", "b"} and "failing" in supervisor.down

    await eventually(all_started, seconds=10, what="children started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(stopped) == ["a", "b"]  # awaited: their cleanup ran before we got here
    assert supervisor.down == {} and ops.checks == []
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("test.")]
    assert leftovers == []


@pytest.fixture
async def sigterm_caught() -> AsyncIterator[asyncio.Event]:
    """A SIGTERM sent to this process sets the event instead of ending the test run."""
    loop = asyncio.get_running_loop()
    caught = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, caught.set)
    yield caught
    loop.remove_signal_handler(signal.SIGTERM)


async def test_a_stop_process_child_that_dies_sends_sigterm_to_its_own_process(
    sigterm_caught: asyncio.Event, caplog: pytest.LogCaptureFixture
) -> None:
    ops = Ops("test", "test-node")

    async def consumer() -> None:
        raise RuntimeError("consumer lost its way")

    supervisor = Supervisor(ops, delays=(0.05,))
    async with supervisor.running(Child("consumer", consumer, Policy.STOP_PROCESS)):
        await asyncio.wait_for(sigterm_caught.wait(), 10)
        assert supervisor.down == {"consumer": "RuntimeError: consumer lost its way"}
    assert ops.failure == "task consumer died: RuntimeError: consumer lost its way"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and critical[0].exc_info is not None
    assert "stopping the process" in critical[0].getMessage()
    assert restarts(ops, "consumer") == 0  # not restarted in place


DYING_SERVICE = textwrap.dedent(
    """
    import asyncio
    from aiohttp import web
    from core.service import OPS, SETTINGS, Ops, add_ops_routes, run
    from core.supervision import SUPERVISOR, Child, Policy, Supervisor

    async def consume():
        await asyncio.sleep(0.2)
        raise RuntimeError("poisoned")

    async def work_ctx(app):
        async with app[SUPERVISOR].running(Child("consumer", consume, Policy.STOP_PROCESS)):
            yield
        print("consumer context closed", flush=True)

    def build(settings):
        app = web.Application()
        app[SETTINGS] = settings
        app[OPS] = Ops("dying", "dying-node")
        app[SUPERVISOR] = Supervisor(app[OPS])
        app.cleanup_ctx.append(work_ctx)
        add_ops_routes(app)
        return app

    run("dying", build, lambda settings: 0)
    """
)


def test_a_service_whose_stop_process_task_dies_shuts_down_gracefully_and_exits_1(
    settings: Settings,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DYING_SERVICE],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "task consumer died" in output and "RuntimeError: poisoned" in output
    assert "consumer context closed" in proc.stdout  # the usual shutdown ran
    assert "stopped in" in output
    assert proc.stderr.strip().splitlines()[-1] == (
        "dying: stopped: task consumer died: RuntimeError: poisoned"
    )


async def published_posts(settings: Settings) -> Counter[int]:
    """How many times each post was published on the posts topic, reading every
    partition up to its current end."""
    topic = Topics.for_settings(settings).posts
    consumer = AIOKafkaConsumer(**kafka_common(settings), group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        seen: Counter[int] = Counter()
        async with asyncio.timeout(60):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        try:
                            event = events.decode(message.value)
                        except events.EventDecodeError:
                            continue  # another test's poison event shares the topic
                        if isinstance(event, events.PostCreated):
                            seen[event.post_id] += 1
    finally:
        await consumer.stop()
    return seen


async def test_a_dead_outbox_relay_is_reported_restarted_and_loses_no_post(
    settings: Settings, db: asyncpg.Pool, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    app = create_app(settings)
    app[SUPERVISOR] = Supervisor(app[OPS], delays=(1.0,))  # a short back-off
    api = await aiohttp_client(ApiServer(app))
    author = await sign_up(api)
    posted = [int(await post(api, author, "before the fault"))]

    async def relayed() -> bool:
        unsent: int = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND topic_prefix = $1",
            settings.kafka_topic_prefix,
        )
        return unsent == 0

    await eventually(relayed, seconds=60, what="the relay publishing")  # relay is live

    relay = app[OUTBOX_RELAY]

    async def fail_once(conn: object) -> int:
        del relay._relay_batch  # the real method again from the next batch on
        raise RuntimeError("injected publish failure")

    relay._relay_batch = fail_once  # type: ignore[method-assign]
    posted.append(int(await post(api, author, "as the relay dies")))

    async def reported_down() -> bool:
        resp = await api.get("/readyz")
        checks = (await resp.json())["checks"]
        return resp.status == 503 and checks["task:outbox-relay"] != "ok"

    await eventually(reported_down, seconds=10, what="the dead relay on /readyz")
    body = await (await api.get("/readyz")).json()
    assert body["checks"]["task:outbox-relay"] == "down: RuntimeError: injected publish failure"
    posted.append(int(await post(api, author, "while the relay is down")))  # still 201

    async def ready_again() -> bool:
        return (await api.get("/readyz")).status == 200

    await eventually(ready_again, seconds=10, what="the relay restarted")
    posted.append(int(await post(api, author, "after the restart")))
    metrics = await (await api.get("/metrics")).text()
    assert 'feed_task_restarts_total{task="outbox-relay"} 1.0' in metrics

    await eventually(relayed, seconds=60, what="every accepted post relayed")
    seen = await published_posts(settings)
    assert {post_id: seen[post_id] for post_id in posted} == dict.fromkeys(posted, 1)
