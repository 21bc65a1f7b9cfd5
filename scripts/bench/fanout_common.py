"""Names, dataset shape and settings shared by the fan-out throughput benchmark.

The benchmark owns a database, a Redis db index and a Kafka topic prefix of its own, so
it never touches the dev data, the read benchmark's data (`feed_bench`, Redis db 5) or
the test suite's (Redis db 9, `test-*` topics).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.clients import HiredisPackingConnection, build_redis_cluster
from core.settings import Settings

# One BenchError for every bench module: the shared helpers (common, runner) raise it too.
from scripts.bench.common import TAKEN_REDIS_DBS, BenchError

ROOT = Path(__file__).resolve().parents[2]
DB_NAME = "feed_bench_fanout"
REDIS_DB = 6
TOPIC_PREFIX = "bench-fanout-"
# Ids of seeded users come from this worker id: far above the ids services lease (and
# the read benchmark's 1000/1001), so they never collide with anything else.
USER_WORKER_ID = 1002
POST_WORKER_ID = 1003
TARGET_WRITES_PER_SECOND = 250_000  # ../shared/DESIGN.md "Numbers we hold ourselves to"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED_DBS = {"feed", "feed_bench", "postgres", "template0", "template1"}


@dataclass(frozen=True, slots=True)
class Shape:
    """What is seeded. Stored in the bench database, so a second run can tell whether
    the data it finds is the data it was asked for."""

    followers: int = 200_000  # active followers of the one big author (the user pool)
    authors: int = 2_000  # normal authors
    per_author: int = 100  # followers of each normal author, drawn from the pool
    seed: int = 7

    def as_rows(self) -> list[tuple[str, int]]:
        return [(f.name, int(getattr(self, f.name))) for f in dataclasses.fields(self)]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the benchmark's data lives: derived from the dev stack's addresses."""

    base: Settings
    db_name: str = DB_NAME
    redis_db: int = REDIS_DB
    topic_prefix: str = TOPIC_PREFIX
    # A Redis Cluster the benchmark started (--redis-cluster): the URL of one node, and
    # every node's port. Empty: the stack's single Redis, db `redis_db`.
    cluster_url: str = ""
    cluster_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not _DB_NAME.match(self.db_name) or self.db_name in _RESERVED_DBS:
            raise BenchError(f"refusing to use database {self.db_name!r} for this benchmark")
        if self.redis_db in TAKEN_REDIS_DBS:
            raise BenchError(f"Redis db {self.redis_db} belongs to dev, read bench or tests")
        if not self.topic_prefix:
            raise BenchError("the Kafka topic prefix must not be empty (dev topics)")

    @property
    def database_url(self) -> str:
        return _with_path(self.base.database_url, f"/{self.db_name}")

    @property
    def maintenance_url(self) -> str:
        """A database that always exists, to CREATE/DROP the bench database from."""
        return _with_path(self.base.database_url, "/postgres")

    @property
    def redis_url(self) -> str:
        return self.cluster_url or _with_path(self.base.redis_url, f"/{self.redis_db}")

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    @property
    def redis_ports(self) -> tuple[int, ...]:
        """Every Redis server the run uses (for CPU accounting)."""
        return self.cluster_ports or (self.redis_port,)

    def redis_client(self, **options: Any) -> aioredis.Redis | RedisCluster:
        """The benchmark's own client to its Redis: hiredis packing, like the worker's."""
        if self.cluster_url:
            return build_redis_cluster(self.cluster_url, **options)
        return aioredis.Redis.from_url(
            self.redis_url, connection_class=HiredisPackingConnection, **options
        )

    @property
    def redis_host(self) -> str:
        return urlsplit(self.base.redis_url).hostname or "127.0.0.1"

    def settings(self) -> Settings:
        """Settings for the benchmark's own clients (seeding, producing, verifying)."""
        return dataclasses.replace(
            self.base,
            database_url=self.database_url,
            redis_url=self.redis_url,
            redis_cluster=bool(self.cluster_url),
            kafka_topic_prefix=self.topic_prefix,
        )


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))
