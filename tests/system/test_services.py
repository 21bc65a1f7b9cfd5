"""Every service as a real process: ready, ops endpoints, SIGTERM; and each way of not
starting (a dependency unreachable, a port taken, a bad setting) is one clear line.

Each test checks one process, but the module starts all of its tests' processes
together, when the first test asks (`launched`): a start is mostly Python importing,
and on several cores those imports overlap. Only the selected tests' processes start;
each test then waits for and checks its own as before."""

import dataclasses
import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from core.settings import Settings
from tests.support.procs import get, start_service, wait_ready

pytestmark = pytest.mark.slow
# Bounds a hang, not a speed: a process may wait for the CPU behind the others started
# with it.
READY_TIMEOUT = 90.0

# Services that read from the replica (DATABASE_READ_URL, core/replica.py); its entry
# says "ok (lag ...)" while it is in use.
REPLICA_CHECKS = ("postgres-replica", "task:replica-monitor")
EXPECTED_CHECKS = {
    "server": {
        "postgres",
        "redis",
        "kafka",
        "task:kafka-link",
        "task:id-lease",
        "task:outbox-relay",
        "task:media-worker",
        "task:ranking-impressions",  # RANKING_LOG_IMPRESSIONS, on by default
        "task:stats",
        *REPLICA_CHECKS,
    },
    "gateway": {
        "redis",
        "postgres",
        "pubsub",
        "task:pubsub-link",
        "task:pubsub-subscriptions",
        "task:presence",
        "task:pull-authors",
        "task:stats",
    },
    "fanout": {
        "postgres",
        "redis",
        "kafka",
        "task:id-lease",
        "task:consumer",
        "task:stats",
        *REPLICA_CHECKS,
    },
    "push": {"postgres", "redis", "kafka", "task:consumer", "task:stats"},
}


Started = tuple[subprocess.Popen[str], int]


class Launched:
    """The processes of this module's tests, by name (see the module's docstring)."""

    def __init__(self, settings: Settings, wanted: set[str]) -> None:
        self.settings = settings
        self.wanted = wanted
        self.procs: dict[str, Started] = {}
        self.squatter = socket.socket()  # holds the port of test_port_taken_...
        self.squatter.bind(("127.0.0.1", 0))
        self.squatter.listen()
        self.taken: int = self.squatter.getsockname()[1]

    def __getitem__(self, name: str) -> Started:
        if not self.procs:
            for key in sorted(self.wanted | {name}):
                self.procs[key] = self.start(key)
        if name not in self.procs:
            self.procs[name] = self.start(name)
        return self.procs[name]

    def start(self, name: str) -> Started:
        settings = self.settings
        if name in EXPECTED_CHECKS:
            return start_service(name, settings, SHUTDOWN_TIMEOUT="5")
        starts: dict[str, Callable[[], Started]] = {
            "redis_and_kafka_down": lambda: start_service(
                "server",
                dataclasses.replace(
                    settings, redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1"
                ),
            ),
            "unreachable_database": lambda: start_service(
                "server",
                dataclasses.replace(settings, database_url="postgresql://feed:pw@127.0.0.1:1/feed"),
                STARTUP_TIMEOUT="1",
            ),
            "unreachable_redis": lambda: start_service(
                "gateway",
                dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"),
                STARTUP_TIMEOUT="1",
            ),
            "unreachable_kafka": lambda: start_service(
                "fanout",
                dataclasses.replace(settings, kafka_bootstrap="127.0.0.1:1"),
                STARTUP_TIMEOUT="1",
            ),
            "port_taken": lambda: start_service("server", settings, SERVER_PORT=str(self.taken)),
            "bad_setting": lambda: start_service("push", settings, FANOUT_BATCH_SIZE="lots"),
        }
        return starts[name]()

    def close(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=15)
        self.squatter.close()


# The process each test checks, beyond the parametrized service tests (by `service`).
PROCESS_OF_TEST = {
    "test_server_reports_redis_and_kafka_down_but_stays_ready": "redis_and_kafka_down",
    "test_unreachable_database_is_one_clear_line": "unreachable_database",
    "test_unreachable_redis_is_one_clear_line_for_the_gateway": "unreachable_redis",
    "test_unreachable_kafka_is_one_clear_line_for_fanout": "unreachable_kafka",
    "test_port_taken_is_one_clear_line": "port_taken",
    "test_bad_setting_is_one_clear_line": "bad_setting",
}


def process_of(item: pytest.Item) -> str | None:
    if not isinstance(item, pytest.Function) or item.module is None:
        return None
    if item.module.__name__ != __name__:
        return None
    spec = getattr(item, "callspec", None)
    if spec is not None and spec.params.get("service") in EXPECTED_CHECKS:
        return str(spec.params["service"])
    return PROCESS_OF_TEST.get(item.originalname)


@pytest.fixture(scope="module")
def launched(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Launched]:
    wanted = {name for item in request.session.items if (name := process_of(item))}
    processes = Launched(settings, wanted)
    try:
        yield processes
    finally:
        processes.close()


@pytest.mark.parametrize("service", sorted(EXPECTED_CHECKS))
def test_service_is_ready_serves_ops_endpoints_and_stops_on_sigterm(
    service: str, launched: Launched
) -> None:
    proc, port = launched[service]
    try:
        ready = json.loads(wait_ready(proc, port, READY_TIMEOUT))
        assert ready["ready"] is True
        assert set(ready["checks"]) == EXPECTED_CHECKS[service]
        states = {name: state.split(" (lag ")[0] for name, state in ready["checks"].items()}
        assert set(states.values()) == {"ok"}, ready

        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["service"] == service

        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        text = body.decode()
        assert "# TYPE process_resident_memory_bytes gauge" in text
        assert 'feed_service_info{node="' in text and f'service="{service}"' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0, output
    assert "stopped in" in output
    assert "Traceback" not in output


def test_server_reports_redis_and_kafka_down_but_stays_ready(launched: Launched) -> None:
    """Postgres is the server's only hard dependency: posts wait in the outbox for Kafka,
    feeds fall back to Postgres when Redis is gone."""
    proc, port = launched["redis_and_kafka_down"]
    try:
        ready = json.loads(wait_ready(proc, port, READY_TIMEOUT))
        assert ready["checks"]["postgres"] == "ok"
        assert ready["checks"]["redis"] != "ok"
        assert ready["checks"]["kafka"] != "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def one_line_failure(started: Started) -> str:
    proc, _ = started
    output = proc.communicate(timeout=READY_TIMEOUT)[0]
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    return output.strip().splitlines()[-1]


def test_unreachable_database_is_one_clear_line(launched: Launched) -> None:
    line = one_line_failure(launched["unreachable_database"])
    assert line.startswith("server: error: cannot reach PostgreSQL at postgresql://feed:***@")
    assert "pw@" not in line


def test_unreachable_redis_is_one_clear_line_for_the_gateway(launched: Launched) -> None:
    line = one_line_failure(launched["unreachable_redis"])
    assert line.startswith("gateway: error: cannot reach Redis at redis://")


def test_unreachable_kafka_is_one_clear_line_for_fanout(launched: Launched) -> None:
    line = one_line_failure(launched["unreachable_kafka"])
    assert line.startswith("fanout: error: cannot reach Kafka at 127.0.0.1:1")


def test_port_taken_is_one_clear_line(launched: Launched) -> None:
    line = one_line_failure(launched["port_taken"])  # the squatter listens until the end
    assert line == f"server: error: port {launched.taken} on 127.0.0.1 is already in use"


def test_bad_setting_is_one_clear_line(launched: Launched) -> None:
    assert one_line_failure(launched["bad_setting"]) == (
        "push: configuration error: FANOUT_BATCH_SIZE must be an integer, got 'lots'"
    )
