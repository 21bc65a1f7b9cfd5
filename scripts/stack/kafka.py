"""The local Kafka broker (KRaft, one node that is broker and controller)."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from .config import (
    HOST,
    KAFKA_LOG4J,
    KAFKA_POM,
    KAFKA_STARTED_MARKER,
    Settings,
    heap_megabytes,
)
from .host import port_answers, require_binary, run, say
from .jvm import JvmService, ensure_maven_jars


def new_cluster_id() -> str:
    """22-char URL-safe base64 of a random UUID, like `kafka-storage random-uuid`."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka's own generator avoids a leading '-': it would look like a CLI flag.
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_properties(
    node_id: int, port: int, voters: dict[int, int], data: Path, replicas: int
) -> dict[str, str]:
    """A KRaft node that is both broker and controller, on loopback: the stack's single
    broker (replicas=1) and each of scripts/kafka_cluster.py's (replicas=3: every topic,
    Kafka's own included, that many copies, writes acknowledged by two, no unclean
    leader election). `voters`: node id -> controller port, this node's included."""
    min_insync = str(min(2, replicas))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(f"{n}@{HOST}:{p}" for n, p in voters.items()),
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{voters[node_id]}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "6",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_insync,
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_insync,
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "delete.topic.enable": "true",
    }


class Kafka(JvmService):
    name = "kafka"
    port_setting = "STACK_KAFKA_PORT"
    env_var = "KAFKA_BOOTSTRAP"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "kafka.log", "kafka.pid")
        self.port = settings.kafka_port
        self.controller_port = settings.kafka_controller_port
        self.props = self.home / "server.properties"

    def url(self) -> str:
        return f"{HOST}:{self.port}"

    def extra_ports(self) -> dict[int, str]:
        return {self.controller_port: "STACK_KAFKA_CONTROLLER_PORT"}

    process_marker = "kafka.Kafka"  # our broker's JVM, not any java

    def classpath(self) -> str:
        return f"{self.libs}/*"

    def java(self) -> str:
        return require_binary("java", "openjdk-17-jre-headless", auto_install=False)

    # -- jars
    def ensure_jars(self) -> None:
        """Copy the broker jars from Maven Central via mvn, once per pom.xml version."""
        ensure_maven_jars("kafka", KAFKA_POM, self.libs, "~46 MB")

    # -- configuration & storage
    def write_properties(self) -> None:
        voters = {1: self.controller_port}
        properties = broker_properties(1, self.port, voters, self.data, replicas=1)
        lines = ["# Written by scripts/stack.py on every start; edit the script, not this file."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        self.props.write_text("\n".join(lines) + "\n")

    def java_base(self) -> list[str]:
        """`java ... -cp libs/*` with our logging config, for the broker and its tools."""
        return [
            self.java(),
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{KAFKA_LOG4J}",
            "-cp",
            self.classpath(),
        ]

    def format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        say(f"kafka: formatting storage in {self.data} (cluster id {cluster_id})")
        cmd = [
            *self.java_base(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.props),
        ]
        run(cmd, what="kafka storage format", cwd=self.home, timeout=120)

    def jvm_heap_flags(self) -> list[str]:
        heap = self.settings.kafka_heap
        # -Xms above -Xmx makes the JVM refuse to start; shrink -Xms for tiny heaps.
        initial = "256m" if heap_megabytes(heap) >= 256 else heap
        return [f"-Xms{initial}", f"-Xmx{heap}", "-XX:+UseG1GC"]

    def launch(self) -> None:
        self.java()  # fail fast with the install hint, before fetching jars
        self.home.mkdir(parents=True, exist_ok=True)
        self.ensure_jars()
        self.write_properties()
        self.format_storage()
        java, *rest = self.java_base()
        cmd = [java, *self.jvm_heap_flags(), *rest, "kafka.Kafka", str(self.props)]
        self.spawn(cmd, "kafka")  # ready once the started line is in this start's log

    def log_says_started(self) -> bool:
        # The line comes within the first few hundred lines; only read the head so
        # `status`/`start` stay fast however big a long-running broker's log gets.
        try:
            with open(self.log, "rb") as handle:
                head = handle.read(4 * 1024 * 1024)
        except OSError:
            return False
        return KAFKA_STARTED_MARKER.encode() in head

    def is_ready(self) -> bool:
        return port_answers(HOST, self.port) and self.log_says_started()
