"""Script calls to Redis without redis-py, for the hottest read path (GET /v1/feed).

redis-py costs ~140 us of CPU per call here (a connection checked out of a pool, a retry
wrapper, a socket timeout armed per read); a bare asyncio Protocol with hiredis costs
~65 us (scripts/bench/client_overhead.py). A feed page makes two calls, so this client
saves about 150 us per page on a 2-core machine where a page may cost 1 ms in all.

One connection per process, pipelined: calls are written as they come and answered in
order, so concurrent requests share round trips instead of waiting for a pooled
connection. Errors are redis-py's, so callers keep one `except REDIS_ERRORS`:
- ConnectionError when Redis cannot be reached or the link drops (every call in flight
  fails; the next call reconnects);
- TimeoutError when an answer takes longer than `timeout`: the link is dropped then,
  since an answer that late means Redis is stuck or the link is, and every call behind
  it would wait as long;
- ResponseError for an error reply (a script error, a wrong type).
NOSCRIPT (a Redis restarted or flushed its scripts) loads the script and retries once.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.redis_address import RedisAddress

Arg = bytes | str | int


class LeanScript:
    """A Lua script by its SHA1, as EVALSHA wants it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Redis's script id


class _Link(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not self._waiting:
                continue  # cannot happen with Redis; never crash on it
            waiter = self._waiting.popleft()
            if not waiter.done():  # a caller that gave up (cancelled) is skipped
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self._waiting = self._waiting, collections.deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(RedisConnectionError(f"Redis link lost: {exc or 'closed'}"))

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise RedisConnectionError("Redis link is closed")
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        self._waiting.append(waiter)
        return waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class LeanRedis:
    def __init__(self, address: RedisAddress, timeout: float = 5.0) -> None:
        self._address = address
        self._timeout = timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None

    async def run(self, script: LeanScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA `script` (loading it first if Redis does not know it)."""
        reply = await self._call("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self._call("SCRIPT", "LOAD", script.text)
            reply = await self._call("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def close(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        self._link = None

    async def _call(self, *args: Arg) -> Any:
        link = self._link if self._link is not None and self._link.open else await self._open()
        waiter = link.call(*args)
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except TimeoutError:
            link.abort()
            raise RedisTimeoutError(f"no answer from Redis within {self._timeout:g} s") from None

    async def _open(self) -> _Link:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent first calls share one connection
            if self._link is not None and self._link.open:
                return self._link
            address = self._address
            try:
                async with asyncio.timeout(self._timeout):
                    link = await address.open(_Link)
                    hello: list[asyncio.Future[Any]] = []
                    if address.password:
                        user = [address.username] if address.username else []
                        hello.append(link.call("AUTH", *user, address.password))
                    if address.db:
                        hello.append(link.call("SELECT", address.db))
                    for reply in await asyncio.gather(*hello):
                        if isinstance(reply, hiredis.ReplyError):
                            link.abort()
                            raise RedisConnectionError(f"Redis refused the connection: {reply}")
            except TimeoutError:
                raise RedisTimeoutError("Redis did not answer the connection in time") from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot reach Redis: {exc}") from None
            self._link = link
            return link
