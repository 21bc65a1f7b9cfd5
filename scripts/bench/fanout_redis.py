"""Redis-side accounting for the fan-out benchmark: how much of a window Redis itself
spent executing commands (INFO commandstats), to split wall time into "Redis busy" and
"everything else" (Python, Postgres, Kafka, waiting)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

Stats = dict[str, tuple[int, int]]  # command -> (calls, usec), cumulative since start


async def command_stats(client: aioredis.Redis | RedisCluster) -> Stats:
    """Summed over every primary on a cluster."""
    if isinstance(client, RedisCluster):
        if not client.get_primaries():  # a client that has not run a command yet
            await client.initialize()
        nodes = client.get_primaries()
        raws = [await client.info("commandstats", target_nodes=node) for node in nodes]
    else:
        raws = [await client.info("commandstats")]
    found: Stats = {}
    for raw in raws:
        for name, value in raw.items():
            if name.startswith("cmdstat_") and isinstance(value, dict):
                command = name.removeprefix("cmdstat_")
                calls, usec = found.get(command, (0, 0))
                found[command] = (calls + int(value["calls"]), usec + int(value["usec"]))
    return found


@dataclass(frozen=True, slots=True)
class RedisTime:
    """Commands run in a window. Commands inside a script are counted twice by Redis
    (as themselves and inside EVALSHA's time), so `scripts_s` is the script total and
    `other_s` only what ran outside scripts; the instance is shared with whatever else
    uses it at the time (the test suite, the read benchmark), which the numbers include."""

    evalsha_calls: int
    scripts_s: float
    other_s: float
    zadd_calls: int

    @property
    def busy_s(self) -> float:
        return self.scripts_s + self.other_s


SCRIPT_COMMANDS = ("evalsha", "eval", "fcall")
# Counted inside the scripts that call them (Redis 7 reports them as their own commands).
IN_SCRIPT = ("zadd", "zcard", "zremrangebyrank", "exists", "publish", "unlink", "zrem")


def delta(before: Stats, after: Stats) -> RedisTime:
    def diff(name: str) -> tuple[int, int]:
        calls0, usec0 = before.get(name, (0, 0))
        calls1, usec1 = after.get(name, (0, 0))
        return calls1 - calls0, usec1 - usec0

    scripts = sum(diff(n)[1] for n in SCRIPT_COMMANDS)
    skip = set(SCRIPT_COMMANDS) | set(IN_SCRIPT)
    other = sum(diff(n)[1] for n in after if n not in skip)
    return RedisTime(
        evalsha_calls=diff("evalsha")[0],
        scripts_s=scripts / 1e6,
        other_s=other / 1e6,
        zadd_calls=diff("zadd")[0],
    )
