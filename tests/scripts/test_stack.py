"""The local stack script: status of the running stack, and one-line errors."""

import socket
from pathlib import Path

import pytest

from tests.support.env import stack
from tests.support.private_redis import private_redis

pytestmark = pytest.mark.slow


def test_status_reports_every_service_running() -> None:
    result = stack("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("postgres", "postgres-replica", "redis", "kafka", "s3"):
        assert any(line.split()[:2] == [name, "running"] for line in lines), lines


def test_start_is_idempotent_and_quick_when_running() -> None:
    result = stack("start")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already running") == 5


def test_env_names_the_read_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby's URL is the one services read from; it is really a standby of ours."""
    import subprocess

    monkeypatch.delenv("DATABASE_READ_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    lines = stack("env", "postgres", "postgres-replica").stdout.splitlines()
    urls = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert set(urls) == {"DATABASE_URL", "DATABASE_READ_URL"}
    assert urls["DATABASE_READ_URL"] != urls["DATABASE_URL"]
    recovery = subprocess.run(
        ["psql", "-X", "-tA", "-d", urls["DATABASE_READ_URL"], "-c", "SELECT pg_is_in_recovery()"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert recovery.stdout.strip() == "t", recovery.stderr


def test_no_replica_is_started_for_an_external_primary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Cloning someone else's database is not ours to do: reads then use DATABASE_URL."""
    isolated(monkeypatch, tmp_path)
    running = stack("env", "postgres").stdout
    url = next(line.split("=", 1)[1] for line in running.splitlines() if "DATABASE_URL" in line)
    monkeypatch.setenv("DATABASE_URL", url.strip("'\"").replace("127.0.0.1", "localhost"))
    monkeypatch.delenv("DATABASE_READ_URL", raising=False)
    result = stack("start", "postgres-replica")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "stack" / "postgres-replica").exists(), "started a standby anyway"
    assert "export DATABASE_READ_URL=''" in stack("env", "postgres-replica").stdout


def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))
    for name in (
        "DATABASE_URL",
        "DATABASE_READ_URL",
        "REDIS_URL",
        "KAFKA_BOOTSTRAP",
        "S3_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_port_taken_by_someone_else_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolated(monkeypatch, tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("STACK_REDIS_PORT", str(port))
        result = stack("start", "redis")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"stack: error: redis: port {port} on 127.0.0.1 is in use by another process; "
        "set STACK_REDIS_PORT to a free port"
    )


def test_external_url_that_does_not_answer_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolated(monkeypatch, tmp_path)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = stack("start", "redis")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stack: error: REDIS_URL points at 127.0.0.1:1")


def test_external_server_is_used_not_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolated(monkeypatch, tmp_path)
    running = stack("env").stdout
    redis_url = next(line.split("=", 1)[1] for line in running.splitlines() if "REDIS_URL" in line)
    # Same server under another name: `localhost` is not our local stack's exact URL.
    monkeypatch.setenv("REDIS_URL", redis_url.strip("'\"").replace("127.0.0.1", "localhost"))
    result = stack("start", "redis")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "stack" / "redis").exists(), "started a local redis anyway"
    assert "external" in result.stdout


def test_start_reserves_its_ports_from_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outgoing connection given a stack port would make a restart of that service
    fail to bind; reserving adds to what the machine reserves already."""
    from scripts.stack import host as stack_script

    reserved = tmp_path / "ip_local_reserved_ports"
    reserved.write_text("100-102,56379\n")
    monkeypatch.setattr(stack_script, "RESERVED_PORTS", reserved)
    stack_script.reserve_ports([101, 56379, 5000, 4000])
    assert reserved.read_text() == "100-102,56379,4000,5000"
    stack_script.reserve_ports([4000])  # nothing new: left as it is
    assert reserved.read_text() == "100-102,56379,4000,5000"
    reserved.write_text("")
    stack_script.reserve_ports([7])
    assert reserved.read_text() == "7"
    # Not there, or not writable (a container, a user who is not root): no error.
    monkeypatch.setattr(stack_script, "RESERVED_PORTS", tmp_path / "missing" / "file")
    stack_script.reserve_ports([8])


def test_redis_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    """The stack's Redis writes an append-only file: a restart is not a cold start."""
    import redis

    with private_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.zadd("tl:{1}", {b"post-1": 1.0, b"post-2": 2.0})
        client.set("kept", b"yes")
        client.close()
        server.restart(down_seconds=0)
        client = redis.Redis.from_url(server.url)
        try:
            assert client.zrange("tl:{1}", 0, -1) == [b"post-1", b"post-2"]
            assert client.get("kept") == b"yes"
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        finally:
            client.close()


def test_env_names_the_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    lines = stack("env", "s3").stdout.splitlines()
    names = {line.split("=", 1)[0].removeprefix("export ") for line in lines}
    assert names == {"S3_ENDPOINT", "S3_BUCKET", "S3_REGION", "S3_ACCESS_KEY", "S3_SECRET_KEY"}


def test_external_object_store_is_used_not_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    isolated(monkeypatch, tmp_path)
    running = stack("env", "s3").stdout
    endpoint = next(line.split("=", 1)[1] for line in running.splitlines() if "S3_ENDPOINT" in line)
    monkeypatch.setenv("S3_ENDPOINT", endpoint.strip("'\"").replace("127.0.0.1", "localhost"))
    monkeypatch.setenv("S3_BUCKET", "elsewhere")
    result = stack("start", "s3")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "stack" / "s3").exists(), "started a local object store anyway"
    assert "external" in result.stdout
    assert "export S3_BUCKET=elsewhere" in stack("env", "s3").stdout
