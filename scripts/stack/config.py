"""The stack's settings (STACK_* variables), its fixed names and ports, and the one
expected error. Standard library only, like the whole package."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
PROJECT_DIR = SCRIPTS_DIR.parent
KAFKA_POM = SCRIPTS_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = SCRIPTS_DIR / "kafka" / "log4j.properties"
S3_POM = SCRIPTS_DIR / "s3" / "pom.xml"
S3_LOGBACK = SCRIPTS_DIR / "s3" / "logback.xml"
# The local object store's fixed bucket and development credentials (not secrets: the
# store listens on loopback only; production sets S3_* to its own).
S3_BUCKET = "feed-media"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "feed-local"
S3_SECRET_KEY = "feed-local-secret"  # noqa: S105 - documented development default

HOST = "127.0.0.1"
SERVICE_ORDER = ("postgres", "postgres-replica", "redis", "kafka", "s3")
POLL_INTERVAL = 0.2
STOP_GRACE_SECONDS = 30.0
EXTERNAL_WAIT_SECONDS = 5.0
LOG_TAIL_LINES = 15

# The broker logs this exact text (kafka.server.KafkaRaftServer, INFO) once the
# broker and controller are both up and serving; verified against Kafka 3.9.1:
#   [...] INFO [KafkaRaftServer nodeId=1] Kafka Server started (kafka.server.KafkaRaftServer)
KAFKA_STARTED_MARKER = "Kafka Server started"

REPLICA_SLOT = "feed_stack_replica"
# What the standby answers to on the primary: loopback only, like everything else here.
REPLICATION_HBA = "host replication postgres 127.0.0.1/32 trust"


class StackError(Exception):
    """An expected problem: reported as one `stack: error:` line, exit status 1."""


def env_int(name: str, default: int, low: int = 1, high: int = 65535) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise StackError(f"{name}={value} is out of range ({low}..{high})")
    return value


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "yes", "true", "on"):
        return True
    if raw in ("0", "no", "false", "off"):
        return False
    raise StackError(f"{name} must be yes or no, not {raw!r}")


def env_timeout() -> float:
    raw = os.environ.get("STACK_START_TIMEOUT", "").strip()
    if not raw:
        return 90.0
    try:
        value = float(raw)
    except ValueError:
        raise StackError(f"STACK_START_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise StackError("STACK_START_TIMEOUT must be > 0")
    return value


def heap_megabytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", heap)
    if not match:
        raise StackError(f"STACK_KAFKA_HEAP={heap!r} is not a JVM size like 768m or 1g")
    number, unit = int(match.group(1)), match.group(2).lower()
    return {"": number // (1024 * 1024), "k": number // 1024, "m": number, "g": number * 1024}[unit]


@dataclass(frozen=True)
class Settings:
    stack_dir: Path
    pg_port: int
    redis_port: int
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str
    start_timeout: float
    redis_persist: bool = True
    s3_port: int = 59000
    pg_replica_port: int = 55433

    @classmethod
    def from_env(cls) -> Settings:
        stack_dir = Path(os.environ.get("STACK_DIR") or PROJECT_DIR / ".stack")
        # Absolute, but not symlink-resolved: the stray-process sweep looks for this
        # exact string in command lines, and the user expects to see the path they gave.
        stack_dir = Path(os.path.abspath(stack_dir))
        settings = cls(
            stack_dir=stack_dir,
            pg_port=env_int("STACK_PG_PORT", 55432),
            redis_port=env_int("STACK_REDIS_PORT", 56379),
            kafka_port=env_int("STACK_KAFKA_PORT", 59092),
            kafka_controller_port=env_int("STACK_KAFKA_CONTROLLER_PORT", 59093),
            kafka_heap=os.environ.get("STACK_KAFKA_HEAP", "").strip() or "768m",
            start_timeout=env_timeout(),
            redis_persist=env_flag("STACK_REDIS_PERSIST", default=True),
            s3_port=env_int("STACK_S3_PORT", 59000),
            pg_replica_port=env_int("STACK_PG_REPLICA_PORT", 55433),
        )
        settings.check_ports_distinct()
        heap_megabytes(settings.kafka_heap)  # validate early, before anything starts
        return settings

    def check_ports_distinct(self) -> None:
        ports = {
            "STACK_PG_PORT": self.pg_port,
            "STACK_PG_REPLICA_PORT": self.pg_replica_port,
            "STACK_REDIS_PORT": self.redis_port,
            "STACK_KAFKA_PORT": self.kafka_port,
            "STACK_KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "STACK_S3_PORT": self.s3_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise StackError(
                    f"{seen[port]} and {name} are both {port}; give each service its own port"
                )
            seen[port] = name
