"""Script calls to Redis without redis-py, for the hottest read path (GET /v1/feed).

redis-py costs ~140 us of CPU per call here (a connection checked out of a pool, a retry
wrapper, a socket timeout armed per read); a bare asyncio Protocol with hiredis costs
~65 us (scripts/bench/client_overhead.py), on a 2-core machine where a whole feed page
should cost a few hundred microseconds of CPU.

One connection per process, pipelined: the calls made in one loop iteration go out in
one write and are answered in order, so concurrent requests share round trips (and
syscalls) instead of waiting for a pooled connection. Errors are redis-py's, so callers
keep one `except REDIS_ERRORS`:
- ConnectionError when Redis cannot be reached, or the link drops and the call, sent
  once more on a fresh link, fails again. A link closed before the answer (a Redis
  restart, an idle link cut) is retried once at once: the calls made here are reads
  (page scripts, MGET) and writes that change nothing when repeated (a ranked page's
  snapshot SET and impressions ZADD), safe to send twice;
- TimeoutError when an answer takes longer than `timeout`: every call in flight fails
  and the link is dropped, since an answer that late means Redis is stuck or the link
  is, and every call behind it would wait as long. Never retried;
- RedisUnavailable (a ConnectionError) at once, while the RedisGate (core/redis_gate.py,
  shared with the redis-py client of the same Redis) says Redis is unreachable: one call
  at a time probes, the others do not wait for a connect or a timeout of their own;
- ResponseError for an error reply (a script error, a wrong type); on a cluster node,
  its redis-py subclass for a redirection (MovedError, AskError, TryAgainError,
  ClusterDownError), which core/lean_cluster.py follows.
NOSCRIPT (a Redis restarted or flushed its scripts) loads the script and retries once.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, cast

import hiredis
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.redis_address import Arg as Arg  # re-exported: callers type their arguments by it
from core.redis_address import RedisAddress, pack
from core.redis_gate import RedisGate

T = TypeVar("T")


class LeanScript:
    """A Lua script by its SHA1, as EVALSHA wants it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Redis's script id


class LeanClient(Protocol):
    """What the feed's read path asks of its wire client: LeanRedis on one Redis,
    core.lean_cluster.LeanCluster on a cluster (`cluster` tells which, for the few reads
    whose shape differs: keys of several posts live on several nodes there)."""

    cluster: ClassVar[bool]

    async def run(self, script: LeanScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any: ...

    async def command(self, *args: Arg) -> Any: ...

    async def mget(self, names: Sequence[Arg]) -> list[Any]: ...

    async def commands(self, commands: Sequence[Sequence[Arg]]) -> list[Any]: ...

    async def close(self) -> None: ...


# Error replies a cluster node gives instead of an answer, as redis-py's exceptions.
_REDIRECTS: dict[str, type[ResponseError]] = {
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
}


def reply_error(reply: hiredis.ReplyError) -> ResponseError:
    """The exception an error reply raises: a redirection's own type (its message is
    what follows the code, as redis-py's parser gives it), else ResponseError."""
    text = str(reply)
    code, _, rest = text.partition(" ")
    kind = _REDIRECTS.get(code)
    return ResponseError(text) if kind is None else kind(rest)


class LinkLost(RedisConnectionError):
    """The link closed before the call's answer came (retried once on a fresh link)."""


class RefusedError(RedisConnectionError):
    """Redis answered the connection's AUTH or SELECT with an error (a configuration
    error, not an outage: the gate is not tripped)."""


class _Link(asyncio.Protocol):
    """One connection. Commands are written once per loop iteration (all the calls made
    in it in one write), and one timer watches the oldest unanswered call instead of a
    timeout armed per call."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not self._waiting:
                continue  # cannot happen with Redis; never crash on it
            waiter, _ = self._waiting.popleft()
            if not waiter.done():  # a caller that gave up (cancelled) is skipped
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(LinkLost(f"Redis link lost: {exc or 'closed'}"))

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        if not self.open:
            raise RedisConnectionError("Redis link is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(pack(*args))
        deadline = loop.time() + self._timeout
        self._waiting.append((waiter, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        return waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(outgoing)
        # else connection_lost fails the calls waiting for these

    def _watch(self) -> None:
        """The oldest call unanswered past its deadline means Redis or the link is stuck,
        and every call behind it would wait as long: all fail, and the link is dropped
        (the next call reconnects)."""
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0][1]
        if deadline > loop.time():
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        self._fail(RedisTimeoutError(f"no answer from Redis within {self._timeout:g} s"))
        self.abort()

    def _fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        for waiter, _ in waiting:
            if not waiter.done():
                waiter.set_exception(error)


def _ignored(answer: asyncio.Future[Any]) -> None:
    """An answer nobody waits for (ASKING's OK): its failure is the next call's too."""
    if not answer.cancelled():
        answer.exception()


class LeanRedis:
    """`gate`: the RedisGate of the redis-py client of the same Redis (core.clients.gate_of),
    so that both fail fast together; without one, a gate of its own."""

    cluster: ClassVar[bool] = False

    def __init__(
        self, address: RedisAddress, timeout: float = 5.0, gate: RedisGate | None = None
    ) -> None:
        self._address = address
        self._timeout = timeout
        if gate is None:  # a probe connects, then waits for its answer: two timeouts
            where = address.path or f"{address.host}:{address.port}"
            gate = RedisGate(f"Redis at {where}", 2 * timeout)
        self._gate = gate
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None

    async def run(
        self, script: LeanScript, keys: Sequence[Arg], args: Sequence[Arg], asking: bool = False
    ) -> Any:
        """EVALSHA `script` (loading it first if Redis does not know it). `asking`: sent
        right after ASKING on the same link (a cluster's ASK redirection)."""
        reply = await self._call("EVALSHA", script.sha, len(keys), *keys, *args, asking=asking)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self._call("SCRIPT", "LOAD", script.text)
            reply = await self._call("EVALSHA", script.sha, len(keys), *keys, *args, asking=asking)
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)
        return reply

    async def command(self, *args: Arg, asking: bool = False) -> Any:
        """One plain command (MGET, ...), pipelined with the scripts in flight."""
        reply = await self._call(*args, asking=asking)
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)
        return reply

    async def mget(self, names: Sequence[Arg]) -> list[Any]:
        values: list[Any] = await self.command("MGET", *names)
        return values

    async def commands(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one write, their replies in order; an error reply raises
        (the first one)."""
        replies = await self.pipeline(commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one write, their replies in order; an error reply is
        returned as its exception (reply_error), not raised: the caller decides about
        each (a cluster's per-key redirections)."""
        replies = await self._call_many(commands)
        return [reply_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def close(self) -> None:
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        self._link = None

    async def _call(self, *args: Arg, asking: bool = False) -> Any:
        def send(link: _Link) -> asyncio.Future[Any]:
            if asking:  # written in the same batch, just before: ASKING covers it
                link.call("ASKING").add_done_callback(_ignored)
            return link.call(*args)

        return await self._on_link(send)

    async def _call_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """_call for several commands at once (the same link, gate and one retry)."""
        replies = await self._on_link(
            lambda link: asyncio.gather(*[link.call(*command) for command in commands])
        )
        return list(replies)

    async def _on_link(self, send: Callable[[_Link], Awaitable[T]]) -> T:
        """What `send` writes on the link, answered: the gate asked first, a link closed
        before the answer retried once on a fresh one, a timeout reported to the gate."""
        gate = self._gate
        caller = object()  # this call, to the gate (its probe, if it is one)
        retried = False
        while True:
            link = self._link
            if link is None or not link.open:
                link = await self._open(caller)
            if gate.down:
                gate.admit(caller)
            try:
                reply = await send(link)
            except LinkLost:
                if retried:
                    raise
                retried = True  # closed before the answer: once more, on a fresh link
                continue
            except RedisTimeoutError as exc:
                gate.failed(caller, exc)
                raise
            if gate.down:
                gate.answered()
            return reply

    async def _open(self, caller: object) -> _Link:
        gate = self._gate
        if gate.down:
            gate.admit(caller)  # while another call probes: refused now, not after its connect
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent first calls share one connection
            if self._link is not None and self._link.open:
                return self._link
            if gate.down:  # it may have tripped while this call waited for the lock
                gate.admit(caller)
            try:
                link = await self._connect()
            except RefusedError:
                raise  # Redis answered: a configuration error, not an outage
            except (RedisConnectionError, RedisTimeoutError) as exc:
                gate.failed(caller, exc)
                raise
            self._link = link
            return link

    async def _connect(self) -> _Link:
        address = self._address
        try:
            async with asyncio.timeout(self._timeout):
                link = await address.open(lambda: _Link(self._timeout))
                hello = [link.call(*command) for command in address.hello()]
                for reply in await asyncio.gather(*hello):
                    if isinstance(reply, hiredis.ReplyError):
                        link.abort()
                        raise RefusedError(f"Redis refused the connection: {reply}")
        except TimeoutError:
            raise RedisTimeoutError("Redis did not answer the connection in time") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot reach Redis: {exc}") from None
        return link
