"""What every service process shares: ops routes, metrics registry, and the process runner.

The runner owns the process lifecycle: settings parsed once, logging configured, uvloop,
the HTTP site bound, SIGTERM/SIGINT turned into a bounded graceful shutdown, and start-up
failures (port taken, dependency unreachable, bad setting) reported as one line; a
process stopped by a dead task (core.supervision) exits 1 after the same shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import uvloop
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)

from core.clients import CONNECT_ERRORS, DependencyUnavailable
from core.http_errors import ShapedErrorsRunner
from core.logs import configure_logging
from core.settings import Settings, SettingsError

log = logging.getLogger(__name__)

READY_CHECK_TIMEOUT = 2.0
BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency probe for /readyz. A non-critical failure is reported, not fatal."""

    name: str
    probe: Callable[[], Awaitable[object]]
    critical: bool = True


@dataclass(slots=True)
class Ops:
    service: str
    node: str
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    checks: list[Check] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    # Set when a supervised task stops the process (core.supervision): `run` then exits 1.
    failure: str | None = None
    task_restarts: Counter = field(init=False)

    def __post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        info = Gauge(
            "feed_service_info", "Service identity", ["service", "node"], registry=self.registry
        )
        info.labels(self.service, self.node).set(1)
        self.task_restarts = Counter(
            "feed_task_restarts",
            "Long-lived tasks that died and were restarted (core.supervision)",
            ["task"],
            registry=self.registry,
        )


OPS = web.AppKey("ops", Ops)
SETTINGS = web.AppKey("settings", Settings)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    return json_response(
        {
            "status": "ok",
            "service": ops.service,
            "node": ops.node,
            "uptime_s": round(time.time() - ops.started_at, 1),
        }
    )


async def _run_check(check: Check) -> tuple[str, str]:
    try:
        result = await asyncio.wait_for(check.probe(), READY_CHECK_TIMEOUT)
    except TimeoutError:
        return check.name, "timeout"
    except CONNECT_ERRORS as exc:
        return check.name, f"down: {exc or type(exc).__name__}"
    # A probe may describe its dependency itself (the read replica's lag); a critical
    # check is ready only as "ok".
    return check.name, result if isinstance(result, str) else "ok"


async def readyz(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    results = await asyncio.gather(*(_run_check(c) for c in ops.checks))
    status = dict(results)
    critical = {c.name for c in ops.checks if c.critical}
    ready = all(state == "ok" for name, state in results if name in critical)
    return json_response({"ready": ready, "checks": status}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[OPS].registry)
    response = web.Response(body=payload)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class StartupError(RuntimeError):
    """Reported as one line on stderr; the process exits 1."""


# Builds the listening site of a set-up runner (host, port, reuse_port); the gateway
# passes its own, whose connections start with its protocol instead of aiohttp's.
SiteFactory = Callable[[web.AppRunner, str, int, bool], web.BaseSite]


def tcp_site(runner: web.AppRunner, host: str, port: int, reuse_port: bool) -> web.BaseSite:
    return web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=BACKLOG)


def app_runner(
    app: web.Application,
    shutdown_timeout: float,
    runner_class: type[web.AppRunner] = ShapedErrorsRunner,
) -> web.AppRunner:
    """The API server passes its own class, whose connections start with its protocol."""
    return runner_class(
        app,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
        keepalive_timeout=app[SETTINGS].http_keepalive_seconds,
    )


def hand_over(transport: asyncio.Transport, protocol: asyncio.Protocol, data: bytes) -> None:
    """A connection a front protocol accepted (the gateway's, the API server's) goes on
    as if `protocol`, aiohttp's RequestHandler, had accepted it: the bytes already read
    are fed to it after connection_made, as its parser expects."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.data_received(data)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float,
    reuse_port: bool = False,
    site_factory: SiteFactory = tcp_site,
    runner_class: type[web.AppRunner] = ShapedErrorsRunner,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down in a bounded, fixed order.

    Order: stop accepting, let in-flight requests finish (bounded by shutdown_timeout),
    run on_shutdown (services tell long-lived clients to go) and cleanup_ctx (close pools).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = app_runner(app, shutdown_timeout, runner_class)
    try:
        try:
            await runner.setup()
        except DependencyUnavailable as exc:
            raise StartupError(str(exc)) from None
        site = site_factory(runner, host, port, reuse_port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"port {port} on {host} is already in use") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        log.info("listening on http://%s:%d", host, port)
        await stop.wait()
        log.info("shutting down (bounded by %.0f s)", shutdown_timeout)
    finally:
        started = time.monotonic()
        await runner.cleanup()
        log.info("stopped in %.2f s", time.monotonic() - started)


def run(
    service: str,
    build_app: Callable[[Settings], web.Application],
    port_of: Callable[[Settings], int],
    reuse_port: bool = False,
    site_factory: SiteFactory = tcp_site,
    runner_class: type[web.AppRunner] = ShapedErrorsRunner,
) -> None:
    """Entry point shared by `python -m <service>`."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"{service}: configuration error: {exc}")
    configure_logging(settings.log_level, service)
    log.info("starting %s with %r", service, settings)
    app = build_app(settings)
    try:
        uvloop.run(
            serve(
                app,
                settings.host,
                port_of(settings),
                settings.shutdown_timeout,
                reuse_port,
                site_factory,
                runner_class,
            )
        )
    except StartupError as exc:
        sys.exit(f"{service}: error: {exc}")
    if (failure := app[OPS].failure) is not None:
        # Stopped by a dead task, after the usual graceful shutdown: a failure for
        # whatever runs this process, so it starts a fresh one.
        sys.exit(f"{service}: stopped: {failure}")


# With the default thresholds (700, 10, 10) the traffic of a busy service (call_soon
# handles, contexts, queued messages) promotes enough short-lived objects to run a full
# collection every few seconds, and a full collection walks the ~80 tracked objects every
# connection keeps for hours: 0.5-1.8 s pauses at 10 000 connections (the benchmark's
# delivery p99) and half the idle CPU. Young collections run less often, and the objects
# of start-up are frozen out of every collection. Full collections become rare, not
# shorter: fewer tracked objects per connection is the lasting fix (a WebSocket upgraded
# by gateway/protocols/ keeps about a dozen). The API server gets the same: its
# requests leave short-lived garbage only, so young collections can be rarer.
GC_THRESHOLDS = (50_000, 20, 100)


def quiet_gc(app: web.Application) -> None:
    """For a service process: GC_THRESHOLDS, and the objects of start-up frozen once the
    app has started (on_startup runs after the cleanup contexts: pools and clients
    exist by then)."""
    gc.set_threshold(*GC_THRESHOLDS)
    app.on_startup.append(_freeze_start_up_objects)


async def _freeze_start_up_objects(app: web.Application) -> None:
    gc.collect()
    gc.freeze()


def node_name(service: str, port: int) -> str:
    return f"{socket.gethostname()}:{service}:{port}"


async def stop_tasks(tasks: list[asyncio.Task[None]], grace: float = 5.0) -> None:
    """Cancel the tasks a component owns and wait for them, bounded. Cancels again if a
    library swallowed the first cancellation (redis-py can, inside a command), so
    shutdown never hangs on one stubborn task."""
    for _ in range(3):
        alive = [t for t in tasks if not t.done()]
        if not alive:
            return
        for task in alive:
            task.cancel()
        await asyncio.wait(alive, timeout=grace / 3)
    stuck = [t.get_name() for t in tasks if not t.done()]
    if stuck:
        log.error("tasks did not stop: %s", ", ".join(stuck))
