"""The feed fast path's wire client on a Redis Cluster, as core/lean_redis.py's LeanRedis is
on one Redis: one LeanRedis per master (one pipelined link, a RedisGate of its own), and
the slot map that routes each call, read with CLUSTER SLOTS. It follows what a cluster
answers while slots move: MOVED (the map is reloaded, the call sent where the slot is
now), ASK (sent to the importing node right after ASKING) and TRYAGAIN (keys of one call
split by a migration: sent again a moment later). Reads of keys of many slots (`mget`)
go as one pipelined write of GETs per node, the nodes side by side. It only reads;
errors are LeanRedis's (redis-py's types), plus SlotUnavailable (a ConnectionError) for
a slot no master serves and ClusterError when redirections do not settle."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.keys import CLUSTER_SLOTS
from core.lean_redis import Arg, LeanRedis, LeanScript
from core.redis_address import RedisAddress

MAX_REDIRECTS = 5  # per call; a migration redirects a key once or twice
# A TRYAGAIN (a call's keys split by a migration) is sent again after a wait that doubles
# from the first to the last, the waits adding up to about a second: MIGRATE moves a
# slot's keys in milliseconds, an operator's tool may pause between batches.
TRY_AGAIN_DELAYS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.32)
RELOAD_AFTER_ERROR = 0.25  # seconds between map reloads after connection errors

Node = tuple[str, int]  # host, port


class SlotUnavailable(RedisConnectionError):
    """No master serves the slot (a failover under way): as unreachable as a dead link."""


def slot_of(key: Arg) -> int:
    return key_slot(key if isinstance(key, bytes) else str(key).encode())


def slot_owners(reply: list[Any], asked: str) -> list[Node | None]:
    """CLUSTER SLOTS as the master of every slot (None: not served). A node that does
    not know its own address names it "" (answered for the host that was asked)."""
    owners: list[Node | None] = [None] * CLUSTER_SLOTS
    for start, end, master, *_ in reply:
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        owner = (host or asked, int(master[1]))
        owners[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
    return owners


class LeanCluster:
    cluster: ClassVar[bool] = True

    def __init__(self, seed: RedisAddress, timeout: float = 5.0) -> None:
        self._seed = seed
        self._timeout = timeout
        self._links: dict[Node, LeanRedis] = {}
        self._owners: list[Node | None] | None = None
        self._version = 0  # maps loaded so far
        self._stale = False  # a connection error since: a failover may have moved masters
        self._tried_at = 0.0
        self._loading: asyncio.Lock | None = None

    def link(self, node: Node) -> LeanRedis:
        found = self._links.get(node)
        if found is None:
            address = dataclasses.replace(self._seed, host=node[0], port=node[1], db=0)
            found = self._links[node] = LeanRedis(address, self._timeout)
        return found

    async def run(self, script: LeanScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA on the master of the first key's slot (a script's keys share one)."""
        return await self._keyed(
            slot_of(keys[0]), lambda node, asking: node.run(script, keys, args, asking)
        )

    async def command(self, *args: Arg) -> Any:
        """A command whose first argument after its name is its key (GET, SMISMEMBER)."""
        return await self._keyed(
            slot_of(args[1]), lambda node, asking: node.command(*args, asking=asking)
        )

    async def commands(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Keyed commands of any slots (as `command`), side by side; replies in order."""
        return list(await asyncio.gather(*(self.command(*c) for c in commands)))

    async def mget(self, names: Sequence[Arg]) -> list[Any]:
        """The values of keys of any slots: one pipelined write of GETs per master, the
        masters side by side."""
        if not names:
            return []
        values, _ = await self._gets(names, None)
        return values

    async def mget_beside(
        self, names: Sequence[Arg], command: Sequence[Arg]
    ) -> tuple[list[Any], Any]:
        """mget, and `command` (keyed by its first argument after its name) written with
        the GETs of its node: one wake-up of that node, and one round trip, less than
        sending it afterwards."""
        return await self._gets(names, command)

    async def _gets(
        self, names: Sequence[Arg], command: Sequence[Arg] | None
    ) -> tuple[list[Any], Any]:
        owners = await self._map()
        groups: dict[Node | None, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(owners[slot_of(name)], []).append(index)
        home = None if command is None else owners[slot_of(command[1])]
        if command is not None:
            groups.setdefault(home, [])
        if None in groups:
            raise SlotUnavailable("a slot of the keys read has no master")
        calls = [
            self._node_gets(node, [names[i] for i in at], command if node == home else None)
            for node, at in groups.items()
        ]
        if len(calls) == 1:
            replies: list[Any] = [await calls[0]]
        else:
            replies = await asyncio.gather(*calls, return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        values: list[Any] = [None] * len(names)
        extra = None
        for (node, at), (found, beside) in zip(groups.items(), replies, strict=True):
            for index, value in zip(at, found, strict=True):
                values[index] = value
            if node == home:
                extra = beside
        return values, extra

    async def _node_gets(
        self, node: Node | None, names: list[Arg], command: Sequence[Arg] | None
    ) -> tuple[list[Any], Any]:
        """One GET per key (and `command` last), all in one write to the node: cheaper for
        Redis than a script reading the keys (a script call's own cost is that of some
        twenty GETs here: scripts/bench/cluster_feed.py). What the node answers with a
        redirection (its slot moved, or is moving) is sent again on its own, following it."""
        assert node is not None
        commands: list[Sequence[Arg]] = [("GET", name) for name in names]
        if command is not None:
            commands.append(command)
        try:
            replies = await self.link(node).pipeline(commands)
        except (RedisConnectionError, RedisTimeoutError):
            self._stale = True
            raise
        redirected = [i for i, reply in enumerate(replies) if isinstance(reply, ResponseError)]
        for i in redirected:
            if not isinstance(replies[i], AskError | TryAgainError):
                raise replies[i]  # not a redirection: a wrong type, CLUSTERDOWN, ...
        if redirected:
            again = await asyncio.gather(*(self.command(*commands[i]) for i in redirected))
            for i, reply in zip(redirected, again, strict=True):
                replies[i] = reply
        if command is None:
            return replies, None
        return replies[:-1], replies[-1]

    async def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.close()

    async def _keyed(self, slot: int, send: Callable[[LeanRedis, bool], Awaitable[Any]]) -> Any:
        owner = (await self._map())[slot]
        if owner is None:
            raise SlotUnavailable(f"slot {slot} has no master")
        node, asking = self.link(owner), False
        redirects = waits = 0
        while redirects < MAX_REDIRECTS:
            try:
                return await send(node, asking)
            except MovedError as exc:  # before AskError: its subclass
                redirects += 1
                await self.reload()
                node, asking = self.link((exc.host, exc.port)), False
            except AskError as exc:
                redirects += 1
                node, asking = self.link((exc.host, exc.port)), True
            except TryAgainError:
                if waits == len(TRY_AGAIN_DELAYS):
                    raise ClusterError(f"slot {slot}: still migrating") from None
                await asyncio.sleep(TRY_AGAIN_DELAYS[waits])
                waits += 1
                owner = (await self._map())[slot]
                if owner is None:
                    raise SlotUnavailable(f"slot {slot} has no master") from None
                node, asking = self.link(owner), False
            except (RedisConnectionError, RedisTimeoutError):
                self._stale = True
                raise
        raise ClusterError(f"slot {slot}: still redirected after {MAX_REDIRECTS} tries")

    async def _map(self) -> list[Node | None]:
        owners = self._owners
        if owners is None or (
            self._stale and time.monotonic() - self._tried_at > RELOAD_AFTER_ERROR
        ):
            await self.reload()
            owners = self._owners
            assert owners is not None
        return owners

    async def reload(self) -> None:
        """Reads the slot map from the first master that answers (the seed last). Calls
        that find a reload under way wait for it instead of starting their own."""
        if self._loading is None:
            self._loading = asyncio.Lock()
        seen = self._version
        async with self._loading:
            if self._version != seen:
                return
            self._tried_at = time.monotonic()
            known = dict.fromkeys(o for o in self._owners or () if o is not None)
            error: Exception | None = None
            for node in [*known, (self._seed.host, self._seed.port)]:
                try:
                    reply = await self.link(node).command("CLUSTER", "SLOTS")
                except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                    error = exc
                    continue
                self._owners = slot_owners(reply, node[0])
                self._version += 1
                self._stale = False
                return
            raise RedisConnectionError(f"no Redis Cluster node gave its slot map: {error}")
