"""Live delivery on a 3-master Redis Cluster (sharded pub/sub) beside one Redis, in the
same run, per core: deliveries per gateway core-second and publishes per Redis
CPU-second.

- The gateway side is the node's own pub/sub reader, in a process of its own:
  gateway/broker.RedisBroker (SUBSCRIBE, one link) on the single Redis,
  gateway/sharded_broker.ShardedBroker (SSUBSCRIBE, one link per master) on the cluster;
  each message parsed and dispatched to a counter. WebSocket writes are the same in both
  modes and left out (scripts/bench/gateway_throughput.py measures them).
- The publisher is a Lua script that publishes a batch the way fan-out's script does
  (PUBLISH on one Redis; on the cluster SPUBLISH, one call per master for the channels of
  its slots), closed loop: at most WINDOW messages published and not yet received.
- Redis CPU is every node's used_cpu_user + used_cpu_sys over the window; both the single
  Redis and the cluster are private servers started here (not the shared stack).

Usage: python -m scripts.bench.cluster_live [--users 3000] [--messages 300000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from core import keys
from core.clients import build_redis_cluster
from core.redis_address import RedisAddress
from fanout.writer import CHANNEL_PREFIX, CHANNEL_SUFFIX
from gateway.broker import RedisBroker
from gateway.sharded_broker import ShardedBroker
from scripts.redis_cluster import redis_cluster, redis_cpu, single_redis

PUBLISH_BATCH = """
local command, prefix, suffix, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 5, #ARGV do redis.call(command, prefix .. ARGV[i] .. suffix, payload) end
return #ARGV - 4
"""
BATCH = 200  # publishes per script call
WINDOW = 20_000  # published, not yet received
PAYLOAD = b'{"type":"post","id":"1","data":{"text":"' + b"x" * 250 + b'"}}'
USER_BASE = 7_000_000


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    delivered: int
    gateway_cpu: float
    redis_cpu: float
    wall: float

    @property
    def per_gateway_core(self) -> float:
        return self.delivered / self.gateway_cpu

    @property
    def per_redis_core(self) -> float:
        return self.delivered / self.redis_cpu


# -- the gateway side, in its own process ------------------------------------------------


def subscriber(
    mode: str, url: str, users: int, expected: int, seen: Synchronized[int], conn: Connection
) -> None:
    asyncio.run(_subscribe_and_count(mode, url, users, expected, seen, conn))


async def _subscribe_and_count(
    mode: str, url: str, users: int, expected: int, seen: Synchronized[int], conn: Connection
) -> None:
    count = 0
    done = asyncio.Event()

    def on_message(channel: bytes, payload: bytes) -> None:
        nonlocal count
        count += 1
        if count % 1000 == 0:
            seen.value = count
        if count >= expected:
            done.set()

    lost: list[object] = []

    def gap(*channels: object) -> None:
        lost.append(channels)  # the link dropped: the run is void
        done.set()

    client: aioredis.Redis | RedisCluster
    broker: RedisBroker | ShardedBroker
    if mode == "single":
        client = aioredis.Redis.from_url(url)
        broker = RedisBroker(RedisAddress.of(client), "bench", on_message, gap)
    else:
        client = build_redis_cluster(url)
        await client.initialize()
        broker = ShardedBroker(client, on_message, gap)
    await broker.start()
    tasks = [asyncio.create_task(broker.run()), asyncio.create_task(broker.run_subscriptions())]
    await broker.subscribe(keys.user_channel(USER_BASE + u).encode() for u in range(users))
    conn.send("ready")
    conn.recv()
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.wait_for(done.wait(), 600)
    if lost:
        conn.send(RuntimeError(f"pub/sub link lost during the run after {count} messages"))
    else:
        conn.send((count, time.process_time() - cpu, time.monotonic() - wall))
    await broker.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


# -- the publisher -----------------------------------------------------------------------


async def publish(
    client: aioredis.Redis | RedisCluster, messages: int, users: int, seen: Synchronized[int]
) -> None:
    sha = await client.script_load(PUBLISH_BATCH)
    ids = [USER_BASE + u for u in range(users)]
    lanes: list[tuple[ClusterNode | None, bytes, list[int]]]
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        groups: dict[str, list[int]] = {}
        for user in ids:
            groups.setdefault(manager.get_node_from_slot(keys.user_slot(user)).name, []).append(
                user
            )
        lanes = [(client.get_node(node_name=n), b"SPUBLISH", g) for n, g in groups.items()]
    else:
        lanes = [(None, b"PUBLISH", ids)]
    sent = 0

    async def lane(node: ClusterNode | None, command: bytes, group: list[int]) -> None:
        nonlocal sent
        share = messages * len(group) // users
        position = 0
        while share > 0:
            # The counter is another process's: no event to wait on.
            while sent - seen.value > WINDOW:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            batch = [group[(position + i) % len(group)] for i in range(min(BATCH, share))]
            position += len(batch)
            args: list[bytes | int | str] = [
                sha,
                0,
                command,
                CHANNEL_PREFIX,
                CHANNEL_SUFFIX,
                PAYLOAD,
                *batch,
            ]
            if node is None:
                await client.execute_command("EVALSHA", *args)
            else:
                await client.execute_command("EVALSHA", *args, target_nodes=node)
            sent += len(batch)
            share -= len(batch)

    await asyncio.gather(*(lane(*spec) for spec in lanes))


async def measure(mode: str, url: str, users: int, messages: int) -> Result:
    client: aioredis.Redis | RedisCluster
    if mode == "single":
        client = aioredis.Redis.from_url(url)
    else:
        client = build_redis_cluster(url)
        await client.initialize()
    # Every lane publishes a whole number of batches' worth of its share; the subscriber
    # waits for exactly what will be sent.
    expected = messages if mode == "single" else await _cluster_total(client, users, messages)
    context = multiprocessing.get_context("spawn")
    seen = context.Value("q", 0)
    ours, theirs = context.Pipe()
    process = context.Process(
        target=subscriber, args=(mode, url, users, expected, seen, theirs), daemon=True
    )
    process.start()
    try:
        assert ours.poll(60) and ours.recv() == "ready", "the subscriber did not start"
        before = await redis_cpu(client)
        ours.send("go")
        await publish(client, messages, users, seen)
        assert ours.poll(600), "the subscriber did not receive everything"
        answer = ours.recv()
        if isinstance(answer, Exception):
            raise answer
        delivered, gateway_cpu, wall = answer
        spent = await redis_cpu(client) - before
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        await client.aclose()
    return Result(mode, delivered, gateway_cpu, spent, wall)


async def _cluster_total(client: aioredis.Redis | RedisCluster, users: int, messages: int) -> int:
    assert isinstance(client, RedisCluster)
    counts: dict[str, int] = {}
    for u in range(users):
        name = client.nodes_manager.get_node_from_slot(keys.user_slot(USER_BASE + u)).name
        counts[name] = counts.get(name, 0) + 1
    return sum(messages * n // users for n in counts.values())


# -- the servers -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    results: dict[str, list[Result]] = {"single": [], "cluster": []}
    with (
        tempfile.TemporaryDirectory() as workdir,
        single_redis(Path(workdir)) as single_url,
        redis_cluster(Path(workdir) / "cluster") as cluster,
    ):
        urls = {"single": single_url, "cluster": cluster.url}
        for _ in range(options.rounds):
            for mode in ("single", "cluster"):  # interleaved: the machine's noise hits both
                result = asyncio.run(measure(mode, urls[mode], options.users, options.messages))
                results[mode].append(result)
                print(
                    f"{mode}: {result.delivered} delivered in {result.wall:.1f} s, gateway "
                    f"{result.gateway_cpu:.2f} CPU s, Redis {result.redis_cpu:.2f} CPU s",
                    flush=True,
                )
    print()
    print("| mode | deliveries per gateway core-second | publishes per Redis CPU-second |")
    print("|---|---:|---:|")
    medians = {}
    for mode, runs in results.items():
        gateway = statistics.median(r.per_gateway_core for r in runs)
        redis_core = statistics.median(r.per_redis_core for r in runs)
        medians[mode] = (gateway, redis_core)
        print(f"| {mode} | {gateway:,.0f} | {redis_core:,.0f} |")
    ratio_gateway = medians["cluster"][0] / medians["single"][0]
    ratio_redis = medians["cluster"][1] / medians["single"][1]
    print(f"| cluster / single | {ratio_gateway:.2f} | {ratio_redis:.2f} |")


if __name__ == "__main__":
    main()
