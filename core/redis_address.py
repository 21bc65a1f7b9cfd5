"""Where a Redis client connects, read from a configured redis-py client, for the few
places that speak to Redis on their own asyncio Protocol (gateway/broker.py's pub/sub
link, core/lean_redis.py's script calls)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection

P = TypeVar("P", bound=asyncio.Protocol)


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
