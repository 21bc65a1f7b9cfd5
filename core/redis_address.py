"""The Redis wire shared by the few places that speak to Redis on their own asyncio
Protocol (core/lean_redis.py's script calls, gateway/broker.py's pub/sub link): where a
configured redis-py client connects, how a connection is opened, the commands that set
it up (AUTH, SELECT), and how a command is put on the wire. What is sent after that, and
how replies are read and waited for, is each link's own."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

P = TypeVar("P", bound=asyncio.Protocol)
Arg = bytes | str | int


def pack(*args: Arg) -> bytes:
    """One command as Redis reads it (RESP: an array of bulk strings), by hiredis."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub: 1-tuples
    return packed


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a configured client connects (host or unix socket, credentials, TLS, db)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # unix socket
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    db: int = 0

    @classmethod
    def of(cls, client: aioredis.Redis) -> RedisAddress:
        pool = client.connection_pool
        kwargs: dict[str, Any] = pool.connection_kwargs
        context = None
        if issubclass(pool.connection_class, SSLConnection):
            # redis-py builds the TLS context from the URL's ssl_* options; reuse it.
            context = pool.connection_class(**kwargs).ssl_context.get()
        return cls(
            host=str(kwargs.get("host", "127.0.0.1")),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path"),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
            db=int(kwargs.get("db") or 0),
        )

    @classmethod
    def of_cluster(cls, client: RedisCluster) -> RedisAddress:
        """Where a cluster client's first startup node is, with its credentials and TLS
        (core/lean_cluster.py finds the other nodes from there)."""
        node = next(iter(client.nodes_manager.startup_nodes.values()))
        # The node's own arguments, as it builds its connections: the client's also hold
        # pool settings (max_connections) that no connection class accepts.
        kwargs: dict[str, Any] = node.connection_kwargs
        context = None
        if issubclass(node.connection_class, SSLConnection):
            context = node.connection_class(**kwargs).ssl_context.get()
        return cls(
            host=node.host,
            port=int(node.port),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl_context=context,
        )

    def hello(self, *, select: bool = True) -> list[tuple[Arg, ...]]:
        """The commands that make a fresh connection act as the configured client's, in
        order: AUTH (with the ACL user, if one is given) and SELECT of its database. A
        pub/sub connection passes select=False: channels are not per database."""
        commands: list[tuple[Arg, ...]] = []
        if self.password:
            user = (self.username,) if self.username else ()
            commands.append(("AUTH", *user, self.password))
        if select and self.db:
            commands.append(("SELECT", self.db))
        return commands

    async def open(self, factory: Callable[[], P]) -> P:
        """A connection speaking `factory`'s protocol (nothing sent yet); callers bound
        the wait."""
        loop = asyncio.get_running_loop()
        if self.path:
            _, proto = await loop.create_unix_connection(factory, self.path)
        else:
            _, proto = await loop.create_connection(
                factory,
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context else None,
            )
        return proto
