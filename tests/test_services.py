import dataclasses
import json
import signal
import socket
import subprocess

import pytest

from core.settings import Settings
from tests.support.procs import get, start_service, wait_ready

pytestmark = pytest.mark.slow

EXPECTED_CHECKS = {
    "server": {
        "postgres",
        "redis",
        "kafka",
        "task:kafka-link",
        "task:id-lease",
        "task:outbox-relay",
        "task:media-worker",
        "task:stats",
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
    "fanout": {"postgres", "redis", "kafka", "task:id-lease", "task:consumer", "task:stats"},
    "push": {"postgres", "redis", "kafka", "task:consumer", "task:stats"},
}


@pytest.mark.parametrize("service", sorted(EXPECTED_CHECKS))
def test_service_is_ready_serves_ops_endpoints_and_stops_on_sigterm(
    service: str, settings: Settings
) -> None:
    proc, port = start_service(service, settings, SHUTDOWN_TIMEOUT="5")
    try:
        ready = json.loads(wait_ready(proc, port))
        assert ready["ready"] is True
        assert set(ready["checks"]) == EXPECTED_CHECKS[service]
        assert set(ready["checks"].values()) == {"ok"}

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


def test_server_reports_redis_and_kafka_down_but_stays_ready(settings: Settings) -> None:
    """Postgres is the server's only hard dependency: posts wait in the outbox for Kafka,
    feeds fall back to Postgres when Redis is gone."""
    broken = dataclasses.replace(
        settings, redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1"
    )
    proc, port = start_service("server", broken)
    try:
        ready = json.loads(wait_ready(proc, port))
        assert ready["checks"]["postgres"] == "ok"
        assert ready["checks"]["redis"] != "ok"
        assert ready["checks"]["kafka"] != "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def one_line_failure(proc: subprocess.Popen[str]) -> str:
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    return output.strip().splitlines()[-1]


def test_unreachable_database_is_one_clear_line(settings: Settings) -> None:
    broken = dataclasses.replace(settings, database_url="postgresql://feed:pw@127.0.0.1:1/feed")
    proc, _ = start_service("server", broken, STARTUP_TIMEOUT="1")
    line = one_line_failure(proc)
    assert line.startswith("server: error: cannot reach PostgreSQL at postgresql://feed:***@")
    assert "pw@" not in line


def test_unreachable_redis_is_one_clear_line_for_the_gateway(settings: Settings) -> None:
    broken = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    proc, _ = start_service("gateway", broken, STARTUP_TIMEOUT="1")
    assert one_line_failure(proc).startswith("gateway: error: cannot reach Redis at redis://")


def test_unreachable_kafka_is_one_clear_line_for_fanout(settings: Settings) -> None:
    broken = dataclasses.replace(settings, kafka_bootstrap="127.0.0.1:1")
    proc, _ = start_service("fanout", broken, STARTUP_TIMEOUT="1")
    assert one_line_failure(proc).startswith("fanout: error: cannot reach Kafka at 127.0.0.1:1")


def test_port_taken_is_one_clear_line(settings: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc, _ = start_service("server", settings, SERVER_PORT=str(taken))
        line = one_line_failure(proc)
    assert line == f"server: error: port {taken} on 127.0.0.1 is already in use"


def test_bad_setting_is_one_clear_line(settings: Settings) -> None:
    proc, _ = start_service("push", settings, FANOUT_BATCH_SIZE="lots")
    assert one_line_failure(proc) == (
        "push: configuration error: FANOUT_BATCH_SIZE must be an integer, got 'lots'"
    )
