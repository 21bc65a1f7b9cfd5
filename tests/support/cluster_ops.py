"""Operator moves on a real Redis Cluster for tests: which master serves a key, and moving
a slot with its keys the way `redis-cli --cluster reshard` does (CLUSTER SETSLOT
IMPORTING on the target, MIGRATING on the source, MIGRATE ... KEYS in batches, then
CLUSTER SETSLOT NODE on every master), in phases so a test can act between them."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio.cluster import ClusterNode, RedisCluster


def node_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The master `cluster`'s slot map gives `key` (redis-py allows for none)."""
    node = cluster.get_node_from_key(key)
    assert node is not None, key
    return node


def other_master(cluster: RedisCluster, node: ClusterNode) -> ClusterNode:
    return next(n for n in cluster.get_primaries() if n.name != node.name)


async def masters_holding(cluster: RedisCluster, names: Iterable[str]) -> set[str]:
    """The masters that really hold these keys, asked on each master (not taken from the
    client's slot map): a test shows its keys are spread over the whole cluster. A node
    holds keys only of the slots it serves, so EXISTS is asked where the slot has keys."""
    holding = set()
    for name in names:
        slot = cluster.keyslot(name)
        for node in cluster.get_primaries():
            if await cluster.execute_command(
                "CLUSTER COUNTKEYSINSLOT", slot, target_nodes=node
            ) and await cluster.execute_command("EXISTS", name, target_nodes=node):
                holding.add(node.name)
    return holding


async def begin_migration(
    cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode
) -> None:
    """IMPORTING on the target first, then MIGRATING on the source (redis-cli's order:
    a key the source refuses with ASK is then always accepted by the target)."""
    target_id = await cluster.execute_command("CLUSTER MYID", target_nodes=target)
    source_id = await cluster.execute_command("CLUSTER MYID", target_nodes=source)
    await cluster.execute_command(
        "CLUSTER SETSLOT", slot, "IMPORTING", source_id, target_nodes=target
    )
    await cluster.execute_command(
        "CLUSTER SETSLOT", slot, "MIGRATING", target_id, target_nodes=source
    )


async def migrate_keys(
    cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode, batch: int = 100
) -> int:
    """MIGRATE every key of the slot still on the source, `batch` at a time; returns how
    many moved."""
    moved = 0
    while names := await cluster.execute_command(
        "CLUSTER GETKEYSINSLOT", slot, batch, target_nodes=source
    ):
        await cluster.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5_000, "KEYS", *names, target_nodes=source
        )
        moved += len(names)
    return moved


async def finish_migration(cluster: RedisCluster, slot: int, target: ClusterNode) -> None:
    """The slot is the target's: told to the target first, then to every other master."""
    target_id = await cluster.execute_command("CLUSTER MYID", target_nodes=target)
    masters = sorted(cluster.get_primaries(), key=lambda n: n.name != target.name)
    for node in masters:
        await cluster.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id, target_nodes=node)


async def move_slot(
    cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode
) -> int:
    """The whole move of one slot and its keys; returns how many keys moved."""
    await begin_migration(cluster, slot, source, target)
    moved = await migrate_keys(cluster, slot, source, target)
    await finish_migration(cluster, slot, target)
    return moved
