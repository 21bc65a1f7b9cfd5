"""docker-compose.yml's "cluster" profile describes the topology `make run-cluster` starts
(issue 24, item 7): a Redis Cluster of 3 masters with a replica each, 3 KRaft brokers, a
Postgres standby and two of every service, all pointed at them. There is no Docker engine
here, so what can be checked without one is: the file parses, the nodes and their
wiring are what the profile claims, every command runs a module of ours and every
variable handed to our services is a setting they read."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from core.settings import Settings
from tests.support.env import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SETTINGS = {f.name.upper() for f in dataclasses.fields(Settings)}
REDIS_NODES = [f"redis-node-{n}" for n in range(1, 7)]
BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
APPS = {
    f"{module}-{n}": module for module in ("server", "gateway", "fanout", "push") for n in (1, 2)
}
CLUSTER = {
    *REDIS_NODES,
    "redis-cluster-init",
    *BROKERS,
    "postgres-replica",
    "bootstrap-cluster",
    *APPS,
    "cluster",
}


def profiled(name: str) -> list[str]:
    return list(SERVICES[name].get("profiles", []))


def test_the_cluster_profile_holds_the_clustered_topology_and_nothing_else() -> None:
    in_profile = {name for name in SERVICES if "cluster" in profiled(name)}
    assert in_profile == CLUSTER
    # `docker compose up` alone still runs the single-node set, unchanged.
    single = {"postgres", "redis", "kafka", "s3", "bootstrap", "server", "gateway"}
    assert all(profiled(name) == [] for name in single)
    # `up cluster` reaches every node through depends_on.
    assert reachable("cluster") >= CLUSTER - {"cluster"}
    for name, service in SERVICES.items():
        assert set(dependencies(service)) <= set(SERVICES), f"{name} depends on an unknown service"


def dependencies(service: dict[str, Any]) -> list[str]:
    found = service.get("depends_on", [])
    return list(found) if isinstance(found, dict | list) else []


def reachable(name: str) -> set[str]:
    seen: set[str] = set()
    todo = dependencies(SERVICES[name])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += dependencies(SERVICES[current])
    return seen


def test_two_of_every_service_each_runs_our_module_with_real_settings() -> None:
    for name, module in APPS.items():
        service = SERVICES[name]
        assert service["command"] == ["python", "-m", module], name
        assert (ROOT / module / "__main__.py").exists()
        env = service["environment"]
        assert set(env) <= SETTINGS, f"{name} sets unknown variables {set(env) - SETTINGS}"
        assert env["REDIS_CLUSTER"] == "true"
        assert env["REDIS_URL"].startswith("redis://redis-node-")
        assert env["KAFKA_BOOTSTRAP"].split(",") == [f"{b}:9092" for b in BROKERS]
        assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == (3, 2)
        assert "@postgres-replica:" in env["DATABASE_READ_URL"]
        assert "@postgres:" in env["DATABASE_URL"]
    bootstrap = SERVICES["bootstrap-cluster"]
    assert bootstrap["command"] == ["python", "-m", "core.bootstrap"]
    assert bootstrap["environment"] == SERVICES["server-1"]["environment"]  # same topics
    # Each gateway resumes clients through an API server of this topology.
    apis = {SERVICES[g]["environment"]["GATEWAY_API_URL"] for g in ("gateway-1", "gateway-2")}
    assert apis == {"http://server-1:8080", "http://server-2:8080"}
    published = [
        SERVICES[name].get("ports", []) for name in APPS if name[:-2] in ("server", "gateway")
    ]
    hosts = [port.split(":")[0] for ports in published for port in ports]
    assert len(hosts) == 4 and len(set(hosts)) == 4  # as separate machines: a port each


def test_six_redis_nodes_become_three_masters_with_a_replica_each() -> None:
    for name in REDIS_NODES:
        command = SERVICES[name]["command"]
        assert command[0] == "redis-server"
        assert command[command.index("--cluster-enabled") + 1] == "yes"
    (init,) = SERVICES["redis-cluster-init"]["command"]
    assert "--cluster create" in init and "--cluster-replicas 1" in init
    assert re.search(r"for n in 1 2 3 4 5 6;.*redis-node-\$\$n", init), init
    assert set(dependencies(SERVICES["redis-cluster-init"])) == set(REDIS_NODES)
    waits = SERVICES["bootstrap-cluster"]["depends_on"]
    assert waits["redis-cluster-init"] == {"condition": "service_completed_successfully"}


def test_three_kraft_brokers_form_one_quorum_with_three_copies_of_everything() -> None:
    envs = [SERVICES[name]["environment"] for name in BROKERS]
    assert sorted(env["KAFKA_NODE_ID"] for env in envs) == [1, 2, 3]
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    for name, env in zip(BROKERS, envs, strict=True):
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(
            f"{n}@{b}:9093" for n, b in enumerate(BROKERS, 1)
        )
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    assert len({str(SERVICES[name]["volumes"]) for name in BROKERS}) == 3  # data of its own


def test_the_standby_streams_from_postgres() -> None:
    replica = SERVICES["postgres-replica"]
    (script,) = replica["command"]
    assert "pg_basebackup -h postgres" in script and " -R " in script
    assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}
    mounted = [c["source"] for c in SERVICES["postgres"].get("configs", [])]
    assert "pg-replication" in mounted
    assert "host replication" in COMPOSE["configs"]["pg-replication"]["content"]
