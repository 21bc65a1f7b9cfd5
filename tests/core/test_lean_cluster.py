"""core/lean_cluster.py: the slot map read from CLUSTER SLOTS (a property over random
layouts), then against a real 3-master cluster: reads of keys spread over every master,
each key read once on its master, and every redirection a resharding causes (MOVED after a slot
moved, ASK and TRYAGAIN while it moves) followed to the right answer."""

import asyncio
import itertools
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, TryAgainError

from core.keys import CLUSTER_SLOTS
from core.lean_cluster import LeanCluster, slot_owners
from core.lean_redis import LeanScript
from core.redis_address import RedisAddress
from tests.support.cluster_ops import (
    begin_migration,
    finish_migration,
    migrate_keys,
    move_slot,
    node_of,
    other_master,
)

pytestmark = pytest.mark.cluster

TWO_KEYS = LeanScript("return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}")


def test_every_slot_maps_to_the_master_of_its_range() -> None:
    rng = random.Random(24)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, CLUSTER_SLOTS), rng.randrange(0, 12)))
        bounds = [0, *cuts, CLUSTER_SLOTS]
        masters = [(rng.choice(["", "10.0.0.1", "h"]), 7000 + i) for i in range(len(bounds))]
        ranges = [
            (start, end - 1, masters[i])
            for i, (start, end) in enumerate(itertools.pairwise(bounds))
        ]
        unserved = rng.choice(ranges) if rng.random() < 0.3 else None
        reply = [
            [start, end, [host.encode(), port, b"id"], [b"replica", 1, b"rid"]]
            for start, end, (host, port) in ranges
            if (start, end, (host, port)) != unserved
        ]
        owners = slot_owners(reply, "asked")
        for start, end, (host, port) in ranges:
            for slot in (start, end, rng.randrange(start, end + 1)):
                expected = (
                    None if unserved == (start, end, (host, port)) else (host or "asked", port)
                )
                assert owners[slot] == expected, (slot, ranges)


@pytest.fixture
async def lean(cluster: RedisCluster) -> AsyncIterator[LeanCluster]:
    client = LeanCluster(RedisAddress.of_cluster(cluster), timeout=2.0)
    yield client
    await client.close()


async def test_mget_reads_keys_of_every_master_each_key_once(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    names = [f"lc:mget:{i}" for i in range(300)]
    for i, name in enumerate(names[::2]):
        await cluster.set(name, f"v{i}")
    assert len({node_of(cluster, n).name for n in names}) == 3
    await lean.mget(names[:3])  # the map loaded, the links open
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)

    values = await lean.mget(names)

    assert values == [f"v{i // 2}".encode() if i % 2 == 0 else None for i in range(300)]
    # Each key read once, on its own master: nothing redirected and read again.
    gets = {}
    for node in cluster.get_primaries():
        stats = await cluster.info("commandstats", target_nodes=node)
        gets[node.name] = stats["cmdstat_get"]["calls"]
        assert stats["cmdstat_get"]["failed_calls"] == 0, stats
    assert sum(gets.values()) == 300 and min(gets.values()) > 50, gets
    assert await lean.mget([]) == []


async def test_scripts_and_commands_go_to_the_master_of_their_slot(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    for user in range(40):  # hash tags of every master
        a, b = f"lc:{{u{user}}}:a", f"lc:{{u{user}}}:b"
        await cluster.set(a, f"a{user}")
        await cluster.sadd(b, "0", "7")
        assert await lean.command("GET", a) == f"a{user}".encode()
        assert await lean.command("SMISMEMBER", b, "0", "7", "8") == [1, 1, 0]
        await cluster.set(b + "x", "bx")
        assert await lean.run(TWO_KEYS, [a, b + "x"], []) == [f"a{user}".encode(), b"bx"]


async def test_commands_of_any_slots_answer_in_order(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    names = [f"lc:cmds:{i}" for i in range(30)]
    assert len({node_of(cluster, n).name for n in names}) == 3
    assert await lean.commands([("SET", n, n, "EX", 60) for n in names]) == [b"OK"] * 30
    assert await lean.commands([("GET", n) for n in reversed(names)]) == [
        n.encode() for n in reversed(names)
    ]


async def test_a_moved_slot_is_followed_and_the_map_reloaded(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    a, b, other = "lc:{moved}:a", "lc:{moved}:b", "lc:elsewhere"
    await cluster.set(a, "1")
    await cluster.set(b, "2")
    await cluster.set(other, "3")
    assert await lean.mget([a, b, other]) == [b"1", b"2", b"3"]  # the map is read now
    source = node_of(cluster, a)
    target = other_master(cluster, source)
    slot = cluster.keyslot(a)

    assert await move_slot(cluster, slot, source, target) == 2

    assert await lean.command("GET", a) == b"1"  # MOVED, then the target
    assert await lean.run(TWO_KEYS, [a, b], []) == [b"1", b"2"]
    assert await lean.mget([other, b, a]) == [b"3", b"2", b"1"]
    # The map was reloaded: the next read goes straight to the new master.
    await cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    assert await lean.mget([a, b]) == [b"1", b"2"]
    stats = await cluster.info("commandstats", target_nodes=source)
    assert "cmdstat_evalsha" not in stats and "cmdstat_get" not in stats
    await move_slot(cluster, slot, target, source)  # back, for the other tests


async def test_keys_of_a_slot_being_migrated_are_read_where_they_are(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    """MIGRATING on the source: a key already moved answers ASK there (followed with
    ASKING), a script whose two keys are split between the nodes answers TRYAGAIN (sent
    again until the migration ends), and mget reads each key where it is."""
    here, gone = "lc:{migrating}:here", "lc:{migrating}:gone"
    await cluster.set(here, "h")
    await cluster.set(gone, "g")
    assert await lean.mget([here, gone]) == [b"h", b"g"]
    source = node_of(cluster, here)
    target = other_master(cluster, source)
    slot = cluster.keyslot(here)
    await begin_migration(cluster, slot, source, target)
    await cluster.execute_command(
        "MIGRATE", target.host, target.port, "", 0, 5_000, "KEYS", gone, target_nodes=source
    )

    on_source = lean.link((source.host, int(source.port)))
    with pytest.raises(AskError):
        await on_source.command("GET", gone)
    assert await lean.command("GET", gone) == b"g"  # the ASK followed
    assert await lean.command("GET", here) == b"h"  # still on the source
    assert await lean.mget([gone, here, "lc:elsewhere"]) == [b"g", b"h", b"3"]

    # Split between the nodes: TRYAGAIN until the rest has moved, then MOVED.
    with pytest.raises(TryAgainError):
        await on_source.run(TWO_KEYS, [here, gone], [])
    split = asyncio.ensure_future(lean.run(TWO_KEYS, [here, gone], []))
    await migrate_keys(cluster, slot, source, target)
    await finish_migration(cluster, slot, target)
    assert await split == [b"h", b"g"]
    assert await lean.mget([here, gone]) == [b"h", b"g"]
    await move_slot(cluster, slot, target, source)


async def test_a_command_goes_with_the_reads_of_its_node(
    cluster: RedisCluster, lean: LeanCluster
) -> None:
    names = [f"lc:beside:{i}" for i in range(60)]
    for name in names:
        await cluster.set(name, name)
    following = "lc:{beside-user}:following"
    await cluster.sadd(following, "0", "7")
    home = node_of(cluster, following)
    values, flags = await lean.mget_beside(names, ("SMISMEMBER", following, "0", "7", "8"))
    assert values == [n.encode() for n in names] and flags == [1, 1, 0]
    # With no key on the command's node, it is sent there alone.
    elsewhere = [n for n in names if node_of(cluster, n).name != home.name]
    values, flags = await lean.mget_beside(elsewhere, ("SMISMEMBER", following, "8"))
    assert values == [n.encode() for n in elsewhere] and flags == [0]
    assert await lean.mget_beside([], ("SMISMEMBER", following, "7")) == ([], [1])
