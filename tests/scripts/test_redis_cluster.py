"""scripts/redis_cluster.py with a replica per master, the shape of the clustered topology
and the ground for failover tests: 3 masters and 3 replicas come up in sync, a write on a
master is read on its replica, and a killed master's replica takes over its slots.

The nodes run with a 2 s cluster-node-timeout instead of Redis's 15 s: a master is
failed over once the others have missed it for that long (plus the replica's election
delay of about a second), so the failover test waits seconds, not half a minute. Shorter
would risk false failovers when the two shared cores stall a node for a moment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from scripts.redis_cluster import LocalCluster, redis_cluster
from tests.support.wait import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(120)]

NODE_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = Path(tmp_path_factory.mktemp("redis-3x2"))
    with redis_cluster(workdir, masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS) as c:
        yield c


def node(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


def key_on(master: int) -> str:
    """A key whose slot `master` serves (as started)."""
    with node(master) as client:
        ranges = [
            (int(start), int(end))
            for start, end, (host, port, *_), *_ in client.execute_command("CLUSTER SLOTS")
            if port == master
        ]
    for number in range(100_000):
        name = f"k{number}"
        if any(start <= key_slot(name.encode()) <= end for start, end in ranges):
            return name
    raise AssertionError(f"no key found for master {master}")


def role(port: int) -> str:
    with node(port) as client:
        return str(client.execute_command("ROLE")[0])


def test_three_masters_and_three_replicas_come_up_each_replica_in_sync(
    replicated: LocalCluster,
) -> None:
    assert len(replicated.ports) == 3 and len(replicated.replicas) == 3
    assert sorted(replicated.replica_of) == sorted(replicated.replicas)
    assert sorted(replicated.replica_of.values()) == sorted(replicated.ports)  # one each
    for replica, master in replicated.replica_of.items():
        with node(replica) as client:
            info = client.info("replication")
            assert info["role"] == "slave"
            assert (info["master_port"], info["master_link_status"]) == (master, "up")
            assert client.cluster("info")["cluster_state"] == "ok"
    with RedisCluster.from_url(replicated.url) as cluster:
        assert len(cluster.get_primaries()) == 3 and len(cluster.get_replicas()) == 3


def test_a_key_written_on_a_master_is_read_on_its_replica(replicated: LocalCluster) -> None:
    master = replicated.ports[0]
    (replica,) = [r for r, m in replicated.replica_of.items() if m == master]
    name = key_on(master)
    with node(master) as primary:
        primary.set(name, "written on the master")
        assert primary.wait(1, 5000) == 1  # the replica acknowledged it
    with node(replica) as copy:
        # A replica redirects reads to its master unless told READONLY.
        with pytest.raises(redis.exceptions.MovedError, match=f"127.0.0.1:{master}$"):
            copy.get(name)
        copy.execute_command("READONLY")
        assert copy.get(name) == "written on the master"


async def test_a_killed_master_is_replaced_by_its_replica_and_the_cluster_is_ok_again(
    replicated: LocalCluster,
) -> None:
    """Last in this module: it leaves the cluster with a master down."""
    master = replicated.ports[1]
    (replica,) = [r for r, m in replicated.replica_of.items() if m == master]
    name = key_on(master)
    with node(master) as primary:
        primary.set(name, "kept")
        assert primary.wait(1, 5000) == 1
    replicated.kill(master)
    others = [p for p in (*replicated.ports, *replicated.replicas) if p != master]

    async def promoted() -> bool:
        if role(replica) != "master":
            return False
        for port in others:
            with node(port) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        return True

    # node timeout + the failure report spreading + the replica's election delay
    await eventually(promoted, seconds=30, what="the replica promoted and the cluster ok")
    with node(replica) as promoted_node:
        assert promoted_node.get(name) == "kept"  # now served by the promoted replica
        flags = promoted_node.cluster("nodes")[f"127.0.0.1:{master}"]["flags"]
        assert "fail" in flags.split(","), flags
    with RedisCluster.from_url(replicated.url) as cluster:
        assert cluster.get(name) == b"kept"  # a cluster client follows the new owner

    replicated.start(master)  # back, it follows the node that took its place

    async def rejoined() -> bool:
        with node(master) as back:
            info = back.info("replication")
        return info["role"] == "slave" and (info["master_port"], info["master_link_status"]) == (
            replica,
            "up",
        )

    await eventually(rejoined, seconds=30, what="the old master back as a replica")
