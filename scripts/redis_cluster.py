"""A real Redis Cluster of N masters on loopback, started from the Debian redis-server
binary: for the tests that must prove cluster behaviour (hash slots, CROSSSLOT,
resharding) and for the fan-out benchmark on more than one Redis core.

The slots are split into N equal ranges by CLUSTER ADDSLOTSRANGE and the nodes joined by
CLUSTER MEET (`redis-cli --cluster create` refuses fewer than three masters)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.keys import CLUSTER_SLOTS
from scripts.bench import procs


@dataclass(frozen=True, slots=True)
class LocalCluster:
    url: str  # redis:// URL of one node, enough for a cluster client to find the rest
    ports: tuple[int, ...]  # every master's


@contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[LocalCluster]:
    """Yields the running cluster; it is torn down afterwards."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not (server and cli):
        raise RuntimeError("redis-server and redis-cli are installed by scripts/stack.py")
    ports = _cluster_ports(masters)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node = workdir / str(port)
            node.mkdir()
            nodes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--dir",
                        str(node),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait(cli, port, ["ping"], "PONG", nodes)
        for index, port in enumerate(ports):
            first = CLUSTER_SLOTS * index // masters
            last = CLUSTER_SLOTS * (index + 1) // masters - 1
            _run(cli, port, "cluster", "addslotsrange", str(first), str(last))
            if index:
                _run(cli, port, "cluster", "meet", "127.0.0.1", str(ports[0]))
        for port in ports:
            _wait(cli, port, ["cluster", "info"], "cluster_state:ok", nodes)
        yield LocalCluster(f"redis://127.0.0.1:{ports[0]}/0", tuple(ports))
    finally:
        procs.stop(nodes, 10.0)


def _cluster_ports(count: int) -> list[int]:
    """Ports whose cluster-bus twin (port + 10000) is free too, so both below 65536."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20_000, 50_000)  # noqa: S311 -- a port, not a secret
        if port not in found and _free(port) and _free(port + 10_000):
            found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run(cli: str, port: int, *command: str) -> None:
    result = subprocess.run(
        [cli, "-p", str(port), *command], capture_output=True, text=True, timeout=10, check=True
    )
    if result.stdout.strip() != "OK":
        raise RuntimeError(f"redis node {port}: {' '.join(command)}: {result.stdout.strip()}")


def _wait(
    cli: str, port: int, command: list[str], expected: str, nodes: list[subprocess.Popen[bytes]]
) -> None:
    def answered() -> bool:
        result = subprocess.run(
            [cli, "-p", str(port), *command], capture_output=True, text=True, check=False
        )
        return expected in result.stdout

    procs.wait_ready(f"redis node {port} ({expected})", answered, nodes, timeout=20)
