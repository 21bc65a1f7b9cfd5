"""Local development stack: PostgreSQL, Redis, Apache Kafka and an S3-compatible object
store (s3proxy) as our own processes.

Usage:
    python3 scripts/stack.py start|stop|restart|status|env
        [postgres|postgres-replica|redis|kafka|s3 ...]

No service names means all five (started in the order postgres, postgres-replica, redis,
kafka, s3 and stopped in reverse order). postgres-replica is a streaming standby of the
local postgres (pg_basebackup -R, a physical replication slot), read through
DATABASE_READ_URL.  Data, logs and pid files live under the project-local,
git-ignored directory ``.stack/`` (project root = parent of ``scripts/``).

This script runs before any virtualenv exists, so it uses only the Python 3.11
standard library.  It is idempotent (``start`` on a running stack is a no-op),
waits for real readiness, and reports every expected problem as one
``stack: error: ...`` line on stderr with exit status 1.

Commands:
    start    start what is not running, wait until ready
    stop     stop local services (and kill any stray process running from .stack)
    restart  stop, then start
    status   one line per service; exit 0 if all are up, 3 otherwise
    env      print ``export DATABASE_URL=... DATABASE_READ_URL=... REDIS_URL=...
             KAFKA_BOOTSTRAP=...`` and the object store's S3_ENDPOINT, S3_BUCKET,
             S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY

Settings (environment variables, all optional):
    STACK_DIR                    data directory (default: <project>/.stack)
    STACK_PG_PORT                PostgreSQL port (default: 55432)
    STACK_PG_REPLICA_PORT        its streaming standby's port (default: 55433)
    STACK_REDIS_PORT             Redis port (default: 56379)
    STACK_KAFKA_PORT             Kafka broker (PLAINTEXT) port (default: 59092)
    STACK_KAFKA_CONTROLLER_PORT  Kafka KRaft controller port (default: 59093)
    STACK_KAFKA_HEAP             Kafka JVM max heap, -Xmx value (default: 768m)
    STACK_S3_PORT                S3-compatible object store (s3proxy) port (default: 59000)
    STACK_START_TIMEOUT          seconds to wait for each service to be ready (default: 90)
    STACK_REDIS_PERSIST          yes (default): Redis keeps its data in an append-only file
                                 (fsync every second), so a restart is not a cold start;
                                 no: nothing is written to disk
    STACK_DEBUG                  set to 1 to get a traceback on unexpected errors
    DATABASE_URL                 if set, PostgreSQL is external (postgresql:// or postgres://):
                                 nothing is started or stopped, it is only checked/reported
    DATABASE_READ_URL            if set, the read replica is external (checked, reported);
                                 with an external DATABASE_URL and no DATABASE_READ_URL, no
                                 replica is started and reads go to the primary
    REDIS_URL                    if set, Redis is external (redis:// or rediss://)
    KAFKA_BOOTSTRAP              if set, Kafka is external (host:port[,host:port...])
    S3_ENDPOINT                  if set, the object store is external (http(s)://host[:port]);
                                 S3_BUCKET, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY go with it,
                                 and its bucket is created by `python -m core.bootstrap`

Everything local binds to 127.0.0.1, and run as root, ``start`` adds the local ports to
the kernel's reserved ports (net.ipv4.ip_local_reserved_ports), so that no outgoing
connection is ever given one of them.  The local endpoints are:
    postgresql://feed:feed@127.0.0.1:<STACK_PG_PORT>/feed
    postgresql://feed:feed@127.0.0.1:<STACK_PG_REPLICA_PORT>/feed  (read-only standby)
    redis://127.0.0.1:<STACK_REDIS_PORT>/0
    127.0.0.1:<STACK_KAFKA_PORT>
    http://127.0.0.1:<STACK_S3_PORT>  (bucket feed-media, key feed-local / feed-local-secret)

Kafka jars come from Maven Central only, via ``mvn`` and scripts/kafka/pom.xml; the object
store's (s3proxy with its filesystem backend: objects are files under .stack/s3/data/)
likewise via scripts/s3/pom.xml.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TextIO

from .config import POLL_INTERVAL, SERVICE_ORDER, Settings, StackError
from .endpoints import (
    ParsedUrl,
    parse_hostports,
    parse_url,
    probe_kafka,
    probe_postgres,
    probe_redis,
)
from .host import say, sweep_strays
from .kafka import Kafka
from .postgres import Postgres
from .redis import Redis
from .replica import NoReplica, PostgresReplica
from .s3 import S3, ExternalS3, probe_http
from .service import ExternalService, LocalService, Service


def build_service(name: str, settings: Settings) -> Service:
    local = {
        "postgres": Postgres,
        "postgres-replica": PostgresReplica,
        "redis": Redis,
        "kafka": Kafka,
        "s3": S3,
    }[name](settings)
    if isinstance(local, PostgresReplica):
        return build_replica(local, settings)
    variable = {
        "postgres": "DATABASE_URL",
        "postgres-replica": "DATABASE_READ_URL",
        "redis": "REDIS_URL",
        "kafka": "KAFKA_BOOTSTRAP",
        "s3": "S3_ENDPOINT",
    }[name]
    # A URL naming our own local server (e.g. exported by `stack.py env`) is not external.
    if os.environ.get(variable, "").strip() in ("", local.url()):
        return local
    if name == "postgres" and os.environ.get("DATABASE_URL", "").strip():
        value = os.environ["DATABASE_URL"].strip()
        return ExternalService(
            name,
            "DATABASE_URL",
            value,
            parse_url(value, ("postgresql", "postgres"), 5432, "DATABASE_URL"),
            probe_postgres,
        )
    if name == "redis" and os.environ.get("REDIS_URL", "").strip():
        value = os.environ["REDIS_URL"].strip()
        parsed = parse_url(value, ("redis", "rediss"), 6379, "REDIS_URL")
        return ExternalService(
            name, "REDIS_URL", value, parsed, probe_redis, tls=value.lower().startswith("rediss:")
        )
    if name == "kafka" and os.environ.get("KAFKA_BOOTSTRAP", "").strip():
        value = os.environ["KAFKA_BOOTSTRAP"].strip()
        endpoints = parse_hostports(value, 9092, "KAFKA_BOOTSTRAP")
        return ExternalService(
            name, "KAFKA_BOOTSTRAP", value, ParsedUrl(endpoints, value), probe_kafka
        )
    if name == "s3" and os.environ.get("S3_ENDPOINT", "").strip():
        value = os.environ["S3_ENDPOINT"].strip()
        tls = value.lower().startswith("https:")
        parsed = parse_url(value, ("http", "https"), 443 if tls else 80, "S3_ENDPOINT")
        return ExternalS3(name, "S3_ENDPOINT", value, parsed, probe_http, tls=tls)
    return local


def build_replica(local: PostgresReplica, settings: Settings) -> Service:
    """DATABASE_READ_URL set (and not ours): that server; else our standby, unless the
    primary is external (we do not clone someone else's database)."""
    value = os.environ.get("DATABASE_READ_URL", "").strip()
    if value and value != local.url():
        return ExternalService(
            "postgres-replica",
            "DATABASE_READ_URL",
            value,
            parse_url(value, ("postgresql", "postgres"), 5432, "DATABASE_READ_URL"),
            probe_postgres,
        )
    if os.environ.get("DATABASE_URL", "").strip() not in ("", Postgres(settings).url()):
        return NoReplica()
    return local


COMMANDS = ("start", "stop", "restart", "status", "env")
USAGE = f"usage: stack.py {{{'|'.join(COMMANDS)}}} [{'|'.join(SERVICE_ORDER)} ...]"


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    if not argv:
        raise StackError(f"no command given; {USAGE}")
    if argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip(), flush=True)
        raise SystemExit(0)
    command, names = argv[0], argv[1:]
    if command not in COMMANDS:
        raise StackError(f"unknown command {command!r}; {USAGE}")
    unknown = [name for name in names if name not in SERVICE_ORDER]
    if unknown:
        raise StackError(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_ORDER)}")
    # Canonical order regardless of how they were typed (postgres, redis, kafka).
    selected = [name for name in SERVICE_ORDER if name in names] if names else list(SERVICE_ORDER)
    return command, selected


def cmd_start(services: list[Service]) -> int:
    for service in services:
        service.start()
    return 0


def cmd_stop(services: list[Service], settings: Settings, everything: bool) -> int:
    for service in reversed(services):
        service.stop()
    if everything and any(isinstance(s, LocalService) for s in services):
        # Full stop: anything else started from .stack (a crashed tool run, an old
        # layout...) goes too. Only when *all* services were asked to stop, so that
        # `stop redis` can never touch postgres or kafka.
        stack = str(settings.stack_dir)
        sweep_strays("cleanup", sorted({f"{stack}/", f"{os.path.realpath(stack)}/"}))
    return 0


def cmd_status(services: list[Service]) -> int:
    rows = [service.status() for service in services]
    width = max(len(row.state) for row in rows)
    names = max(len(row.name) for row in rows)
    for row in rows:
        pid = f"pid {row.pid}" if row.pid else "-"
        print(f"{row.name:<{names}} {row.state:<{width}}  {row.where}  {pid}", flush=True)
    return 0 if all(row.up for row in rows) else 3


def cmd_env(services: list[Service]) -> int:
    for service in services:
        print(service.env_line(), flush=True)
    return 0


class StackLock:
    """Exclusive lock on <stack>/.lock for commands that change state.

    Several developers/test runs may call `start` at once; without this two of
    them could both see "not running" and race to initdb or launch a second JVM.
    The fd is close-on-exec (Python default) and children are spawned with
    close_fds, so daemons never inherit the lock.
    """

    WAIT_SECONDS = 600.0

    def __init__(self, stack_dir: Path) -> None:
        self.path = stack_dir / ".lock"
        self.handle: TextIO | None = None

    def __enter__(self) -> StackLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        deadline = time.monotonic() + self.WAIT_SECONDS
        announced = False
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not announced:
                    say(f"waiting for another stack.py run to finish (lock {self.path})...")
                    announced = True
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"another stack.py run has held {self.path} for {self.WAIT_SECONDS:.0f} s; "
                        "check `ps aux | grep stack.py`"
                    ) from None
                time.sleep(POLL_INTERVAL)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the flock


def main(argv: list[str]) -> int:
    command, names = parse_args(argv)
    settings = Settings.from_env()
    services = [build_service(name, settings) for name in names]
    if command in ("start", "stop", "restart"):
        with StackLock(settings.stack_dir):
            return run_command(command, names, services, settings)
    return run_command(command, names, services, settings)


def run_command(command: str, names: list[str], services: list[Service], settings: Settings) -> int:
    if command == "start":
        return cmd_start(services)
    if command == "stop":
        return cmd_stop(services, settings, everything=len(names) == len(SERVICE_ORDER))
    if command == "restart":
        cmd_stop(services, settings, everything=len(names) == len(SERVICE_ORDER))
        # Fresh objects: the stopped ones may cache state (e.g. a reaped Popen).
        return cmd_start([build_service(name, settings) for name in names])
    if command == "status":
        return cmd_status(services)
    return cmd_env(services)


def entry() -> int:
    try:
        return main(sys.argv[1:])
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("stack: error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort handler, see STACK_DEBUG
        if os.environ.get("STACK_DEBUG") == "1":
            traceback.print_exc()
        hint = (
            "" if os.environ.get("STACK_DEBUG") == "1" else " (set STACK_DEBUG=1 for a traceback)"
        )
        print(
            f"stack: error: unexpected {type(exc).__name__}: {exc}{hint}",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(entry())
