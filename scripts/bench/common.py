"""Names and defaults every benchmark script shares: where the bench data lives and the
settings the server runs with. The bench never writes to the dev database or Redis db 0.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from core.settings import Settings
from scripts.supervise.procs import ProcError

BENCH_DB = "feed_bench"
BENCH_REDIS_DB = 5
TEST_REDIS_DB = 9  # tests/support/env.py
# Redis dbs a benchmark that flushes its own db must never take: dev, this bench, tests.
TAKEN_REDIS_DBS = (0, BENCH_REDIS_DB, TEST_REDIS_DB)
# 10 000 users cannot exceed the default celebrity threshold of 1 000 000 followers, so
# the bench lowers it; the server must run with the same value the timelines were built for.
THROTTLE_MAX = 2_000
PUSH_MAX = 1_000  # must not exceed THROTTLE_MAX (Settings.validate)
BENCH_SECRET = "bench-secret-key-not-for-production"  # noqa: S105 - local benchmark only
BENCH_PORT = 18080
# Password of every seeded account, so a person can also sign in by hand.
BENCH_PASSWORD = "bench-password"  # noqa: S105 - local benchmark only


# The benchmarks' one error, reported as one line: a precondition that failed, or a
# service that did not start (the process runner's error).
BenchError = ProcError


def database_url(base: str, name: str) -> str:
    """`base` with its database name replaced by `name`."""
    if name in {"feed", "postgres", "template0", "template1"}:
        raise BenchError(f"refusing to use database {name!r} for benchmarks")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def read_url_for(database_url: str, replica: str) -> str:
    """DATABASE_READ_URL for a service on `database_url`: the `replica` this environment
    names, on the same database ("" for none: every read goes to the primary). Left as it
    is, a service on a bench database would read the dev database through the replica."""
    if not replica:
        return ""
    return urlunsplit(urlsplit(replica)._replace(path=urlsplit(database_url).path))


def maintenance_url(base: str) -> str:
    """A database that always exists, to CREATE/DROP the bench database from."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/postgres"))


def redis_url(base: str, db: int) -> str:
    if db == 0:
        raise BenchError("refusing to use Redis db 0 (the dev database) for benchmarks")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{db}"))


def base_settings() -> Settings:
    """The dev stack's addresses (DATABASE_URL/REDIS_URL if set), before bench overrides."""
    return Settings.from_env()
