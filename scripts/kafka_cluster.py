"""A real replicated Kafka of N KRaft brokers on loopback (each broker also a controller),
from the same jars as the local stack's broker: for the tests that prove replication
(a broker killed loses no acknowledged event) and for the clustered topology.

Defaults are the production ones issue 24 asks for: replication factor 3 for every
topic (ours and Kafka's own offsets and transaction logs), `min.insync.replicas=2`, no
unclean leader election. A broker can be killed (SIGKILL) and started again on the same
data directory and ports."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scripts import stack
from scripts.supervise import procs

HEAP = "384m"
READY_TIMEOUT = 90.0  # three JVMs starting at once on two cores


@dataclass
class Broker:
    node_id: int
    port: int
    controller_port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    log_start: int = 0  # where this start's lines begin in the log (appended to)

    @property
    def address(self) -> str:
        return f"{stack.HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"


@dataclass
class LocalKafkaCluster:
    brokers: list[Broker]
    java: list[str] = field(repr=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers)

    def kill(self, node_id: int) -> None:
        """SIGKILL one broker: no flush, no controlled shutdown, as a crashed machine."""
        broker = self.brokers[node_id - 1]
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait(10)
        broker.proc = None

    def start(self, node_id: int) -> None:
        broker = self.brokers[node_id - 1]
        _launch(self.java, broker)
        _wait_started([broker])


def _launch(java: list[str], broker: Broker) -> None:
    props = broker.home / "server.properties"
    binary, *rest = java
    heap = [f"-Xms{HEAP}", f"-Xmx{HEAP}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1"]
    with open(broker.log, "ab") as log:
        broker.log_start = log.tell()
        broker.proc = subprocess.Popen(
            [binary, *heap, *rest, "kafka.Kafka", str(props)],
            cwd=broker.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_started(brokers: list[Broker]) -> None:
    def started() -> bool:
        return all(
            stack.port_answers(stack.HOST, b.port)
            and stack.KAFKA_STARTED_MARKER.encode() in b.log.read_bytes()[b.log_start :]
            for b in brokers
        )

    running = [b.proc for b in brokers if b.proc is not None]
    procs.wait_ready("kafka brokers", started, running, timeout=READY_TIMEOUT)


@contextmanager
def kafka_cluster(
    workdir: Path,
    brokers: int = 3,
    *,
    ports: Sequence[int] = (),
    controller_ports: Sequence[int] = (),
    stop_grace: float = 3.0,
) -> Iterator[LocalKafkaCluster]:
    """Yields the running cluster (every broker started); torn down afterwards. `ports`
    and `controller_ports` default to free ones; with fixed ports a workdir of an earlier
    run is started again with its data (its storage is formatted only once)."""
    local = stack.Kafka(stack.Settings.from_env())
    local.java()  # the install hint, before anything else
    local.ensure_jars()
    java = local.java_base()
    broker_ports = list(ports) or [procs.free_port() for _ in range(brokers)]
    voter_ports = list(controller_ports) or [procs.free_port() for _ in range(brokers)]
    if not len(broker_ports) == len(voter_ports) == brokers:
        raise ValueError(f"{brokers} broker and controller ports wanted")
    nodes = [
        Broker(i + 1, port, voter, workdir / f"broker-{i + 1}")
        for i, (port, voter) in enumerate(zip(broker_ports, voter_ports, strict=True))
    ]
    cluster_id = _cluster_id(workdir)
    for broker in nodes:
        broker.home.mkdir(parents=True, exist_ok=True)
        props = broker.home / "server.properties"
        voters = {b.node_id: b.controller_port for b in nodes}
        properties = stack.broker_properties(
            broker.node_id, broker.port, voters, broker.home / "data", replicas=brokers
        )
        props.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        if (broker.home / "data" / "meta.properties").exists():
            continue  # formatted by an earlier run: its topics and offsets are kept
        stack.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            what=f"kafka broker {broker.node_id} storage format",
            cwd=broker.home,
            timeout=120,
        )
    try:
        for broker in nodes:
            _launch(java, broker)
        _wait_started(nodes)
        yield LocalKafkaCluster(nodes, java)
    finally:
        # A short grace by default: a test's cluster keeps nothing, and a controlled
        # shutdown of three brokers that wait on each other takes tens of seconds.
        procs.stop([b.proc for b in nodes if b.proc is not None], stop_grace)


def _cluster_id(workdir: Path) -> str:
    """The workdir's cluster id, made on its first use: every broker formats with it."""
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "cluster.id"
    if not saved.exists():
        saved.write_text(stack.new_cluster_id())
    return saved.read_text().strip()
