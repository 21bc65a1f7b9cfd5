"""A real Redis Cluster of N masters (and optionally a replica or more per master) on
loopback, started from the Debian redis-server binary: for the tests that must prove
cluster behaviour (hash slots, CROSSSLOT, resharding, failover), the fan-out benchmark on
more than one Redis core and the clustered topology of `make run-cluster`.

The slots are split into N equal ranges by CLUSTER ADDSLOTSRANGE, the nodes joined by
CLUSTER MEET and each replica attached by CLUSTER REPLICATE (`redis-cli --cluster create`
refuses fewer than three masters and places replicas by its own rules). With fixed
`ports` and `persist`, the nodes keep their data (append-only file) and cluster
configuration in `workdir`: a second start finds the cluster formed and only waits for it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.keys import CLUSTER_SLOTS
from scripts.supervise import procs

READY_TIMEOUT = 20.0
# Redis's own default: a node unreachable this long is failed over (when it has a
# replica) or, without one, takes the cluster down. Tests that kill masters pass less.
NODE_TIMEOUT_MS = 15_000


@dataclass(frozen=True, slots=True)
class LocalCluster:
    url: str  # redis:// URL of one node, enough for a cluster client to find the rest
    ports: tuple[int, ...]  # every master's (as started: a failover may promote a replica)
    replicas: tuple[int, ...] = ()  # every replica's
    replica_of: dict[int, int] = field(default_factory=dict)  # replica port -> master port
    processes: dict[int, subprocess.Popen[bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )
    commands: dict[int, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crashed machine: no save, no goodbye to the cluster."""
        node = self.processes[port]
        node.kill()
        node.wait(10)

    def start(self, port: int) -> None:
        """Starts a killed node again on its own config (it rejoins the cluster: a master
        replaced meanwhile comes back as a replica of its successor)."""
        assert self.processes[port].poll() is not None, f"node {port} is running"
        self.processes[port] = _launch(self.commands[port])


def node_command(
    server: str, port: int, home: Path, node_timeout_ms: int, persist: bool
) -> list[str]:
    durability = (
        ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
    )
    return [
        server,
        *("--port", str(port)),
        *("--bind", "127.0.0.1"),
        *("--cluster-enabled", "yes"),
        *("--cluster-config-file", str(home / "nodes.conf")),
        *("--cluster-node-timeout", str(node_timeout_ms)),
        # A replica takes over however long it was cut off from its master: with the
        # default (10 x node timeout) a replica of a busy test machine may refuse.
        *("--cluster-replica-validity-factor", "0"),
        *("--dir", str(home)),
        *("--save", ""),
        *durability,
        *("--protected-mode", "no"),
    ]


@contextmanager
def redis_cluster(
    workdir: Path,
    masters: int = 3,
    replicas: int = 0,
    *,
    ports: Sequence[int] = (),
    node_timeout_ms: int = NODE_TIMEOUT_MS,
    persist: bool = False,
) -> Iterator[LocalCluster]:
    """Yields the running cluster, every replica in sync; it is torn down afterwards.
    `replicas` per master; `ports` (masters first, then each master's replicas in
    turn) default to random free ones."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not (server and cli):
        raise RuntimeError("redis-server and redis-cli are installed by scripts/stack.py")
    count = masters * (1 + replicas)
    chosen = list(ports) or _cluster_ports(count)
    if len(chosen) != count:
        raise ValueError(f"{count} ports wanted ({masters} masters, {replicas} replicas each)")
    homes = [workdir / str(port) for port in chosen]
    formed = all((home / "nodes.conf").exists() for home in homes)
    nodes: dict[int, subprocess.Popen[bytes]] = {}
    commands: dict[int, list[str]] = {}
    try:
        for port, home in zip(chosen, homes, strict=True):
            home.mkdir(parents=True, exist_ok=persist)
            commands[port] = node_command(server, port, home, node_timeout_ms, persist)
            nodes[port] = _launch(commands[port])
        running = list(nodes.values())
        for port in chosen:
            _wait(cli, port, ["ping"], "PONG", running)
        if not formed:
            heads, tails = chosen[:masters], chosen[masters:]
            _form(cli, heads, {tail: heads[i // replicas] for i, tail in enumerate(tails)}, running)
        for port in chosen:
            _wait(cli, port, ["cluster", "info"], "cluster_state:ok", running)
        # As the cluster has it: an earlier run's failover may have swapped roles.
        followed = _replicas(chosen, masters * replicas, running)
        for port in followed:
            _wait(cli, port, ["info", "replication"], "master_link_status:up", running)
        for port in chosen:  # clients read the topology from any node: all must know it
            _wait_known(port, len(followed), running)
        yield LocalCluster(
            f"redis://127.0.0.1:{chosen[0]}/0",
            tuple(port for port in chosen if port not in followed),
            tuple(followed),
            replica_of=followed,
            processes=nodes,  # the same dict: a node started again is stopped below too
            commands=commands,
        )
    finally:
        procs.stop(list(nodes.values()), 10.0)


def _replicas(
    ports: list[int], expected: int, nodes: list[subprocess.Popen[bytes]]
) -> dict[int, int]:
    """replica port -> its master's port, once `expected` nodes say they are replicas."""
    found: dict[int, int] = {}

    def settled() -> bool:
        found.clear()
        for port in ports:
            with redis.Redis(port=port, socket_timeout=5) as client:
                info = client.info("replication")
            if info["role"] == "slave":
                found[port] = int(info["master_port"])
        return len(found) == expected

    procs.wait_ready("redis replicas", settled, nodes, timeout=READY_TIMEOUT)
    return dict(found)


def _launch(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _form(
    cli: str,
    masters: list[int],
    replica_of: dict[int, int],
    nodes: list[subprocess.Popen[bytes]],
) -> None:
    for index, port in enumerate(masters):
        first = CLUSTER_SLOTS * index // len(masters)
        last = CLUSTER_SLOTS * (index + 1) // len(masters) - 1
        _run(cli, port, "cluster", "addslotsrange", str(first), str(last))
    for port in [*masters[1:], *replica_of]:
        _run(cli, port, "cluster", "meet", "127.0.0.1", str(masters[0]))
    for replica, master in replica_of.items():
        master_id = _ask(cli, master, "cluster", "myid")

        # A replica must have heard of its master through the cluster bus first
        # ("ERR Unknown node" until then).
        def attached(replica: int = replica, master_id: str = master_id) -> bool:
            return _ask(cli, replica, "cluster", "replicate", master_id) == "OK"

        procs.wait_ready(
            f"redis node {replica} replicating", attached, nodes, timeout=READY_TIMEOUT
        )


def _wait_known(port: int, replicas: int, nodes: list[subprocess.Popen[bytes]]) -> None:
    """Until `port` lists every replica in CLUSTER SLOTS, where cluster clients learn the
    topology (a replica is left out until its replication offset has been gossiped)."""

    def known() -> bool:
        with redis.Redis(port=port, socket_timeout=5) as client:
            slots = client.execute_command("CLUSTER SLOTS")
        return sum(len(entry) - 3 for entry in slots) >= replicas

    procs.wait_ready(
        f"redis node {port} knowing {replicas} replicas", known, nodes, timeout=READY_TIMEOUT
    )


@contextmanager
def single_redis(workdir: Path) -> Iterator[str]:
    """One private redis-server (no persistence) beside a cluster, for benchmarks that
    compare the two in one run: its URL once it answers; stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is installed by scripts/stack.py")
    port = procs.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir)]

    def pings() -> bool:
        try:
            with redis.Redis.from_url(url) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    with procs.running(
        "private redis-server", args, pings, workdir / "redis.log", timeout=10, grace=10
    ):
        yield url


async def redis_cpu(client: aioredis.Redis | RedisCluster) -> float:
    """CPU seconds the Redis server, or every master of a cluster, spent since it
    started (INFO cpu): a benchmark's Redis cost is the difference across its window."""
    if isinstance(client, RedisCluster):
        infos = [await client.info("cpu", target_nodes=n) for n in client.get_primaries()]
    else:
        infos = [await client.info("cpu")]
    return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in infos)


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster-bus twin (port + 10000) is free too, so both below 65536."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20_000, 50_000)  # noqa: S311 -- a port, not a secret
        if port not in found and procs.port_free(port) and procs.port_free(port + 10_000):
            found.append(port)
    return found


def _ask(cli: str, port: int, *command: str) -> str:
    result = subprocess.run(
        [cli, "-p", str(port), *command], capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()


def _run(cli: str, port: int, *command: str) -> None:
    answer = _ask(cli, port, *command)
    if answer != "OK":
        raise RuntimeError(f"redis node {port}: {' '.join(command)}: {answer}")


def _wait(
    cli: str, port: int, command: list[str], expected: str, nodes: list[subprocess.Popen[bytes]]
) -> None:
    def answered() -> bool:
        result = subprocess.run(
            [cli, "-p", str(port), *command], capture_output=True, text=True, check=False
        )
        return expected in result.stdout

    procs.wait_ready(f"redis node {port} ({expected})", answered, nodes, timeout=READY_TIMEOUT)
