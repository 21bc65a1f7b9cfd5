"""Factories for the Postgres pool, the Redis client and Kafka clients, from Settings.

They only build clients; callers own them (create in a cleanup_ctx, close on exit).
`connect_with_retry` turns "the dependency is not there yet" into a bounded wait and
then one clear error line instead of a stack trace.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import hiredis
import orjson
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import Connection as RedisConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.redis_gate import RedisGate
from core.settings import Settings, mask_url

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a service holds for Redis: one Redis, or a cluster client (REDIS_CLUSTER=true).
# Code that takes either keeps to what both do the same: single-key commands, scripts
# over one user's hash-tagged keys, pipelines without transactions, and mget_any.
AnyRedis = aioredis.Redis | RedisCluster

# What "cannot reach a dependency" looks like from each client library.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A Redis Cluster: no node reachable to load the slot map from (RedisClusterException),
    # a slot without a master (CLUSTERDOWN), redirections that never settle.
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterError,
    KafkaError,
)


# Redis unreachable, one node or a cluster: what a caller that degrades without Redis
# catches (CONNECT_ERRORS's Redis part).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterError,
)


class DependencyUnavailable(RuntimeError):
    """A dependency did not answer within the start-up timeout (message names it)."""


async def connect_with_retry(
    what: str, where: str, factory: Callable[[], Awaitable[T]], wait_seconds: float
) -> T:
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            return await factory()
        except CONNECT_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                reason = str(exc) or type(exc).__name__
                raise DependencyUnavailable(f"cannot reach {what} at {where}: {reason}") from None
            log.warning("waiting for %s at %s: %s", what, where, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook that replaces asyncpg's default reset query (advisory unlock,
    CLOSE ALL, UNLISTEN *, RESET ALL), which costs one more round trip per query. Pooled
    connections hold no session state here (only transaction-scoped locks), and asyncpg
    still rolls back an open transaction before calling this hook."""


async def create_db_pool(settings: Settings) -> asyncpg.Pool:
    async def factory() -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=30,
            timeout=5,
            init=_init_connection,
            reset=_keep_session,
        )
        assert pool is not None
        return pool

    return await connect_with_retry(
        "PostgreSQL", mask_url(settings.database_url), factory, settings.startup_timeout
    )


async def create_read_pool(settings: Settings) -> asyncpg.Pool:
    """The pool of DATABASE_READ_URL (core/replica.py). No connection is opened here
    (min_size 0): a replica that is down must not stop a service from starting, its
    reads go to the primary meanwhile. Connects give up after 2 s for the same reason."""
    pool = await asyncpg.create_pool(
        settings.database_read_url,
        min_size=0,
        max_size=settings.db_pool_max,
        command_timeout=30,
        timeout=2,
        init=_init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


class OneRetryOnDeadConnection(Retry):
    """The retry policy of build_redis's clients: a command that fails with a plain
    ConnectionError (a pooled connection closed by a Redis restart, or cut while idle) is
    sent again once, at once, on a fresh connection (redis-py disconnects the failed one
    before the retry). Never on a timeout: against a Redis that does not answer, a retry
    is one more socket_timeout of waiting. Never on the ConnectionError subclasses either
    (RedisUnavailable from the gate, authentication, LOADING, a full pool): Redis or the
    client said why, and the same answer would come again.

    redis-py's own default depends on the constructor: `Redis(...)` retries 10 times with
    back-off on ConnectionError and TimeoutError (up to 11 socket_timeouts per command),
    `Redis.from_url(...)` not at all."""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, (redis.exceptions.ConnectionError,))

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(error: Exception) -> bool:
            return _dead_connection(error) and (is_retryable is None or is_retryable(error))

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def _dead_connection(error: Exception) -> bool:
    return type(error) is redis.exceptions.ConnectionError


class GatedConnection(AbstractConnection):
    """Hooks a redis-py connection to its client's RedisGate (core/redis_gate.py, passed
    as the `redis_gate` connection argument; without one, nothing changes): a connect or
    a send is refused at once while Redis is unreachable, a failed connect or a read
    timeout trips the gate, and any answer read closes it. A dead pooled connection (a
    plain ConnectionError on a connection that was open) is left to the retry policy.
    Combined with a concrete connection class below."""

    def __init__(self, *, redis_gate: RedisGate | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = redis_gate

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        gate = self._gate
        if gate is None or self.is_connected:
            await super().connect_check_health(check_health, retry_socket_connect)
            return
        gate.admit(self)
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # Not the subclasses: a refused password or LOADING is Redis answering.
            if type(exc) in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                gate.failed(self, exc)
            raise

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        gate = self._gate
        if gate is not None and gate.down and self.is_connected:
            try:
                gate.admit(self)
            except redis.exceptions.ConnectionError:
                # Open since before Redis went silent: its state is unknown, start afresh.
                await self.disconnect(nowait=True)
                raise
        await super().send_packed_command(command, check_health)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        gate = self._gate
        if gate is None:
            return await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        try:
            response = await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except redis.exceptions.TimeoutError as exc:
            gate.failed(self, exc)
            raise
        except redis.exceptions.ResponseError:
            gate.answered()
            raise
        # With a `timeout` of its own (pub/sub polling), None means nothing came.
        if gate.down and (timeout is None or response is not None):
            gate.answered()
        return response


class HiredisPackingConnection(GatedConnection, RedisConnection):
    """redis-py's asyncio connection packs commands in pure Python (about 1 us per
    argument: a 30 000-argument fan-out script call spent 30-40 ms there), while its sync
    connection uses hiredis.pack_command (C); same bytes (redis/redis-py#4176). Drop this
    once redis-py does it for asyncio too.

    hiredis encodes str as strict UTF-8, redis-py's default; a connection configured with
    another encoding keeps redis-py's packer. Arguments hiredis refuses (bool, None,
    bytearray, ...) go to redis-py's packer too, which converts them or raises its usual
    DataError.

    Also gated (GatedConnection) when its client has a gate (build_redis's clients)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hiredis = (
            codecs.lookup(self.encoder.encoding).name == "utf-8"
            and self.encoder.encoding_errors == "strict"
        )

    def pack_command(self, *args: Any) -> list[bytes]:
        if not self._hiredis:
            return self._python_pack(*args)
        # Multi-word command names ("CONFIG GET") become separate arguments, as in
        # redis-py's own packers.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return self._python_pack(*args)

    def _python_pack(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = super().pack_command(*args)
        return packed


class GatedSSLConnection(GatedConnection, SSLConnection):
    """rediss:// (redis-py's own packer: hiredis packing is for plain TCP only)."""


class GatedUnixConnection(GatedConnection, UnixDomainSocketConnection):
    """unix:// (redis-py's own packer)."""


# The class the URL's scheme chose -> the same with the gate's hooks.
_GATED: dict[type[AbstractConnection], type[GatedConnection]] = {
    RedisConnection: HiredisPackingConnection,
    SSLConnection: GatedSSLConnection,
    UnixDomainSocketConnection: GatedUnixConnection,
}
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_SOCKET_TIMEOUT = 5.0


def build_redis(settings: Settings, **overrides: Any) -> aioredis.Redis:
    """A single-node client (for a cluster: build_redis_cluster), with one retry on a
    dead connection (OneRetryOnDeadConnection) and a RedisGate of its own (gate_of) that
    makes its callers fail fast while Redis is unreachable."""
    options: dict[str, Any] = {
        "max_connections": settings.redis_max_connections,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "health_check_interval": 15,
        "retry": OneRetryOnDeadConnection(),
    }
    options.update(overrides)
    client: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, **options)
    # For rediss:// and unix:// from_url takes the class from the scheme (whatever
    # connection_class was passed), so the gated class is put in its place afterwards.
    pool = client.connection_pool
    pool.connection_class = _GATED.get(pool.connection_class, pool.connection_class)
    if issubclass(pool.connection_class, GatedConnection):
        # The longest one probe can take: its connect, then its answer.
        probe = (options["socket_connect_timeout"] or 0) + (options["socket_timeout"] or 0)
        pool.connection_kwargs.setdefault(
            "redis_gate", RedisGate(f"Redis at {mask_url(settings.redis_url)}", probe or 30.0)
        )
    return client


def gate_of(client: aioredis.Redis) -> RedisGate | None:
    """The gate of a client from build_redis, for what talks to the same Redis on its own
    protocol (core/lean_redis.py) and should fail fast with it."""
    gate = client.connection_pool.connection_kwargs.get("redis_gate")
    return gate if isinstance(gate, RedisGate) else None


def build_redis_cluster(url: str, **options: Any) -> RedisCluster:
    """A cluster client that packs commands with hiredis, as build_redis's does.

    The asyncio cluster client hard-codes its connection class (from_url drops
    connection_class), but every node it discovers is built from its public
    `connection_kwargs`; set there before the first `initialize()`, the class reaches
    every node. A fan-out batch on a cluster is one ~30 000-argument script call per node,
    which redis-py's own packer took 30-40 ms to pack."""
    client = RedisCluster.from_url(url, **options)
    if url.startswith("redis://"):  # rediss:// keeps its SSL class
        client.connection_kwargs["connection_class"] = HiredisPackingConnection
    return client


def cluster_options(settings: Settings) -> dict[str, Any]:
    """build_redis's connection bounds for a cluster client. Its own retries stay:
    redis-py's cluster client follows MOVED and ASK, waits out TRYAGAIN and reloads the
    slot map after a connection error, within them."""
    return {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "max_connections": settings.redis_max_connections,
        "health_check_interval": 15,
    }


async def create_redis_cluster(settings: Settings) -> RedisCluster:
    """A cluster client (REDIS_CLUSTER=true), connected and with the slot map loaded."""

    async def factory() -> RedisCluster:
        client = build_redis_cluster(settings.redis_url, **cluster_options(settings))
        try:
            await client.initialize()
        except BaseException:
            await client.aclose()
            raise
        return client

    return await connect_with_retry(
        "Redis Cluster", mask_url(settings.redis_url), factory, settings.startup_timeout
    )


async def create_redis(settings: Settings) -> aioredis.Redis:
    client = build_redis(settings)

    async def factory() -> aioredis.Redis:
        await client.ping()
        return client

    try:
        return await connect_with_retry(
            "Redis", mask_url(settings.redis_url), factory, settings.startup_timeout
        )
    except DependencyUnavailable:
        await client.aclose()
        raise


async def create_any_redis(settings: Settings) -> AnyRedis:
    """The service's Redis client as settings say: a cluster client (REDIS_CLUSTER=true)
    or a single-node one; connected, or DependencyUnavailable."""
    if settings.redis_cluster:
        return await create_redis_cluster(settings)
    return await create_redis(settings)


async def mget_any(client: AnyRedis, names: Sequence[str]) -> list[Any]:
    """MGET on either client: one command on a single Redis; on a cluster one MGET per
    hash slot, pipelined per node (redis-py's mget_nonatomic), since a cluster refuses
    an MGET of keys of several slots. For reads off the feed's hot path."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(list(names))
    return list(await client.mget(names))


async def ping_all(client: AnyRedis) -> None:
    """The readiness probe: every master of a cluster must answer (PING goes to one node
    otherwise), or the one Redis."""
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.ping()


def kafka_common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "request_timeout_ms": 15_000,
        # aiokafka keeps sending to a dead broker (NodeNotReadyError, forever) until its
        # next periodic metadata refresh tells it the partitions' new leaders: this bounds
        # the stall after a broker dies (tests/system/test_kafka_replicated.py) for one small
        # request per client every 5 s. Known upstream: aio-libs/aiokafka#642, #1133.
        "metadata_max_age_ms": 5_000,
        "connections_max_idle_ms": 9 * 60_000,
    }


def producer_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Defaults favour durability: every in-sync replica acks, and retries cannot
    duplicate or reorder messages (idempotent producer)."""
    options: dict[str, Any] = {
        **kafka_common(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "client_id": "feed-producer",
    }
    options.update(overrides)
    return options


async def create_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A started producer (bounded wait for Kafka, then a clear error)."""
    options = producer_options(settings, **overrides)

    async def factory() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**options)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    return await connect_with_retry(
        "Kafka", settings.kafka_bootstrap, factory, settings.startup_timeout
    )


def build_consumer(
    settings: Settings, group_id: str, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer in a group with manual commits: callers commit only what they finished."""
    options: dict[str, Any] = {
        **kafka_common(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": 500,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 3_000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def create_admin(settings: Settings) -> AIOKafkaAdminClient:
    async def factory() -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(**kafka_common(settings), client_id="feed-admin")
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        return admin

    return await connect_with_retry(
        "Kafka", settings.kafka_bootstrap, factory, settings.startup_timeout
    )


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    names: tuple[str, ...] | list[str],
    partitions: int,
    replication: int = 1,
    min_insync: int = 1,
) -> list[str]:
    """Create missing topics (KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS; the
    local stack is a single broker: 1 and 1). Returns the topics this call created."""
    existing = set(await admin.list_topics())
    missing = [name for name in names if name not in existing]
    created: list[str] = []
    if missing:
        config = {"min.insync.replicas": str(min_insync)}
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication,
                    topic_configs=config,
                )
                for name in missing
            ]
        )
        for topic, code, *detail in response.topic_errors:
            if code == 0:
                created.append(topic)
            # Another process may create the topic between list and create: same outcome.
            elif code != TopicAlreadyExistsError.errno:
                raise KafkaError(f"cannot create topic {topic}: error {code} {detail}")
    return created
