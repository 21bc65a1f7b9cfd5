"""Two of every service at once (issue 24, item 4), as scripts/run.py starts them with
SEPARATE_PORTS: 2 API servers and 2 gateways each on a port of its own (as on machines of
their own), 2 fan-out workers and 2 push workers sharing their topics' partitions.

Posts go through both API servers in turn (to the other while one is down, as a load
balancer would), followers are spread over both gateways, and one process of each service
is SIGKILLed in turn while posting (the supervisor starts it again): every follower still
gets every post exactly once live (resuming with ?since= after any close) and holds each
once in its feed. Followers offline with a phone get their one coalesced feed push from
the push workers, as with one of each (tests/push/test_push_e2e.py), the push stand-ins
(`python -m standins`) receiving. Each follower is online on its own gateway's node
alone: the gateways are separate nodes (ports, node names, presence).

Most of its time is run.py starting eight processes on two shared cores (30-60 s)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from core import keys
from core.clients import create_admin
from core.ids import min_id_for_ms
from core.settings import Settings
from core.topics import Topics
from scripts.supervise import procs
from scripts.supervise.probe import listens
from scripts.supervise.procs import port_free
from tests.support.api import User
from tests.support.env import ROOT, settings_env
from tests.support.live_traffic import (
    Follower,
    Supervised,
    Traffic,
    call,
    live_traffic,
    made_in_postgres,
    node_ports,
    process_module,
    supervised_system,
)
from tests.support.wait import eventually

# The clustered-topology suite (`make test-cluster`): several processes of every service.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

PROCESSES = {"server": 2, "gateway": 2, "fanout": 2, "push": 2}
CLIENTS = 40  # online followers, half on each gateway
OFFLINE = 6  # followers with a phone who never connect
VICTIMS = ("server", "gateway", "fanout", "push")  # one process of each, in this order


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`python -m standins` on free ports; the settings it printed for a push worker."""
    home = tmp_path / "standins"
    home.mkdir()
    log = (tmp_path / "standins.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins", "--dir", str(home), "--control-port", "0"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        printed = home / "standins.env"

        def written() -> bool:
            return printed.exists() and "STANDINS_CONTROL_URL" in printed.read_text()

        procs.wait_ready("the push stand-ins", written, [proc], timeout=30)
        lines = printed.read_text().splitlines()
        yield dict(line.split("=", 1) for line in lines if "=" in line)
    finally:
        procs.stop([proc], 10.0)
        log.close()


async def apns_received(session: aiohttp.ClientSession, control: str) -> list[dict[str, Any]]:
    async with session.get(f"{control}/received") as resp:
        assert resp.status == 200
        body: dict[str, list[dict[str, Any]]] = await resp.json()
        return body["apns"]


@pytest.fixture
def two_of_each(
    settings: Settings, tmp_path: Path, standins: dict[str, str]
) -> Iterator[Supervised]:
    push = {
        **standins,
        # One feed push per follower for the whole test, however many posts and kills.
        "PUSH_FEED_WINDOW_SECONDS": "600",
    }
    with supervised_system(settings, tmp_path, PROCESSES, True, push) as running:
        yield running


def pid_on(running: Supervised, module: str, port: int) -> int | None:
    found = [
        pid for pid, name in running.children().items() if name == module and listens(pid, port)
    ]
    return found[0] if found else None


def kill(running: Supervised, module: str, port: int) -> int:
    victim = pid_on(running, module, port)
    assert victim is not None, f"no {module} on port {port}"
    os.kill(victim, signal.SIGKILL)
    return victim


async def back(running: Supervised, traffic: Traffic, module: str, port: int, victim: int) -> None:
    async def ready() -> bool:
        pid = pid_on(running, module, port)
        if pid is None or pid == victim:
            return False
        try:
            async with traffic.api.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    await eventually(ready, seconds=90, what=f"{module} on {port} restarted and ready")


async def presence_nodes(running: Supervised, users: list[User]) -> list[set[str]]:
    client = aioredis.Redis.from_url(running.redis.url, decode_responses=True)
    try:
        return [{str(m) for m in await client.smembers(keys.presence(int(u.id)))} for u in users]
    finally:
        await client.aclose()


async def offline_with_phones(traffic: Traffic, settings: Settings) -> dict[str, User]:
    """OFFLINE new followers of the author, each with an APNs device; by device token."""
    phones: dict[str, User] = {}
    for user in await made_in_postgres(settings, OFFLINE):
        url = f"{traffic.base}/v1/users/{traffic.author.id}/follow"
        await call(traffic.api, "POST", url, 200, headers=user.auth)
        token = os.urandom(32).hex()
        body = {"kind": "apns", "token": token}
        await call(
            traffic.api, "POST", f"{traffic.base}/v1/devices", 201, json=body, headers=user.auth
        )
        phones[token] = user
    return phones


async def test_two_of_every_service_deliver_everything_once_through_a_kill_of_each(
    two_of_each: Supervised, settings: Settings, standins: dict[str, str]
) -> None:
    running = two_of_each
    assert Counter(running.children().values()) == PROCESSES
    gateways = running.nodes["gateway"]
    assert len(set(gateways)) == 2 and len(set(running.nodes["server"])) == 2
    async with live_traffic(running, CLIENTS) as traffic:
        # Separate nodes: each follower is online on its own gateway's node alone.
        pids = {port: pid_on(running, "gateway", port) for port in gateways}
        node = {
            f"ws://127.0.0.1:{port}/v1/stream": f"{socket.gethostname()}:gateway:{port}:{pid}"
            for port, pid in pids.items()
        }
        present = await presence_nodes(running, traffic.users)
        assert [
            p for p, f in zip(present, traffic.followers, strict=True) if p != {node[f.url]}
        ] == []
        assert {f.url for f in traffic.followers} == set(node)

        phones = await offline_with_phones(traffic, settings)
        await traffic.posts_made(2)  # posted after they followed: one feed push each
        # One of each in turn, a few posts apart, each while the ones before may still be
        # restarting (under load that takes 10-20 s): at every moment one process of each
        # service is up, and the work goes on through it.
        killed = {}
        for module in VICTIMS:
            port = running.nodes[module][1]
            killed[module, port] = kill(running, module, port)
            await traffic.posts_made(2)
        for (module, port), victim in killed.items():
            await back(running, traffic, module, port, victim)
        await traffic.posts_made(2)
        await traffic.stop_and_check()
        received = await apns_received(traffic.api, standins["STANDINS_CONTROL_URL"])
    feed = Counter(r["token"] for r in received if r["payload"].get("kind") == "feed")
    assert feed == Counter(dict.fromkeys(phones, 1)), received
    output = running.output()
    assert "crash-looping" not in output
    assert output.count(" restarted (restart 1)") == len(VICTIMS), output[-4000:]


# -- the clustered topology: `make run-cluster` ------------------------------------------


def free_run(first: int, offsets: list[int]) -> int:
    """A port p from `first` on with p + each offset free (below the ephemeral range)."""
    for port in range(first, 32_000, 7):
        if all(port_free(port + offset) for offset in offsets):
            return port
    raise AssertionError("no free ports")


def child_pids(parent: int) -> dict[int, str]:
    """pid -> command name of every living child of `parent`."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        name, rest = stat.rsplit(")", 1)
        state, ppid = rest.split()[:2]
        if entry.isdigit() and int(ppid) == parent and state != "Z":
            found[int(entry)] = name.split("(", 1)[1]
    return found


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def replicated_topics(bootstrap: str, settings: Settings) -> dict[str, object]:
    replicated = dataclasses.replace(settings, kafka_bootstrap=bootstrap)
    posts = Topics.for_settings(replicated).posts
    admin = await create_admin(replicated)
    try:
        (described,) = await admin.describe_topics([posts])
        (config,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, posts)])
    finally:
        await admin.close()
    entries = {name: value for name, value, *_ in config.resources[0][4]}
    return {
        "copies": {len(p["replicas"]) for p in described["partitions"]},
        "min.insync.replicas": entries["min.insync.replicas"],
    }


@dataclasses.dataclass
class ClusteredRun:
    proc: subprocess.Popen[bytes]
    log: Path
    nodes: dict[str, list[int]]  # every service process's port
    redis_port: int
    kafka_port: int
    seen: dict[int, str] = dataclasses.field(default_factory=dict)  # every child: pid -> name

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def brokers(self) -> str:
        return ",".join(f"127.0.0.1:{self.kafka_port + n}" for n in range(3))

    def services(self) -> dict[int, tuple[str, dict[str, str]]]:
        """pid -> (module, environment) of every service process."""
        found = {}
        for pid in child_pids(self.proc.pid):
            if (info := process_module(pid)) is not None:
                found[pid] = (info[2], environ(pid))
        return found


@pytest.fixture
def clustered_run(settings: Settings, tmp_path: Path) -> Iterator[ClusteredRun]:
    """`scripts/run.py --cluster` ready, on free ports, its Redis and Kafka data in tmp."""
    redis_port = free_run(20_000, [n + bus for n in range(6) for bus in (0, 10_000)])
    kafka_port = free_run(24_000, [0, 1, 2, 100, 101, 102])
    nodes = node_ports(PROCESSES, separate=True)
    env = settings_env(settings)
    env.pop("GATEWAY_API_URL")
    env.update(
        {f"{m.upper()}_PORT": str(ports[0]) for m, ports in nodes.items()},
        CLUSTER_DIR=str(tmp_path / "cluster"),
        CLUSTER_REDIS_PORT=str(redis_port),
        CLUSTER_KAFKA_PORT=str(kafka_port),
        GATEWAY_CONNECTS_PER_IP="1000",
        FANOUT_GROUP=f"fanout-{tmp_path.name}",
        PUSH_GROUP=f"push-{tmp_path.name}",
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run.py"), "--cluster", "--keep-stack"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    run = ClusteredRun(proc, log, nodes, redis_port, kafka_port)
    try:

        def ready() -> bool:
            run.seen.update(child_pids(proc.pid))
            return "all services ready" in run.output()

        # Six Redis nodes, three JVMs and eight services starting on two shared cores.
        procs.wait_ready("run.py --cluster", ready, [proc], timeout=240, log_tail=run.output)
        run.seen.update(child_pids(proc.pid))
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, name in run.seen.items():  # never leave a node or a service behind
            if alive(pid, name):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    command, rest = stat.split("(", 1)[1].rsplit(")", 1)
    return command == name and rest.split()[0] != "Z"


def check_topology(run: ClusteredRun, settings: Settings) -> None:
    output = run.output()
    masters = tuple(range(run.redis_port, run.redis_port + 3))
    followed = {run.redis_port + 3 + n: run.redis_port + n for n in range(3)}
    assert f"redis cluster ready: masters {masters}, replicas {followed}" in output, output
    assert f"kafka brokers ready: {run.brokers}" in output

    services = run.services()
    assert Counter(module for module, _ in services.values()) == PROCESSES
    for module, env in services.values():
        assert env["REDIS_CLUSTER"] == "true", module
        assert env["REDIS_URL"] == f"redis://127.0.0.1:{run.redis_port}/0"
        assert env["KAFKA_BOOTSTRAP"] == run.brokers
        assert (env["KAFKA_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
        assert env["DATABASE_READ_URL"] == settings.database_read_url
    own = Counter((m, int(env[f"{m.upper()}_PORT"])) for m, env in services.values())
    assert own == Counter((m, p) for m, found in run.nodes.items() for p in found)  # a port each

    with redis.Redis(port=run.redis_port, decode_responses=True) as client:
        flags = [n["flags"] for n in client.cluster("nodes").values()]
    assert sorted(f.replace("myself,", "") for f in flags) == ["master"] * 3 + ["slave"] * 3


def stop_and_see_everything_gone(run: ClusteredRun) -> None:
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(90) == 0, run.output()[-4000:]
    left = {pid: name for pid, name in run.seen.items() if alive(pid, name)}
    assert left == {}, f"left behind: {left}"
    assert {"redis-server", "java", "python"} <= set(run.seen.values())


@pytest.mark.timeout(420)
async def test_run_cluster_starts_redis_3_plus_3_three_brokers_and_two_of_each_on_them(
    clustered_run: ClusteredRun, settings: Settings
) -> None:
    await asyncio.to_thread(check_topology, clustered_run, settings)
    assert await replicated_topics(clustered_run.brokers, settings) == {
        "copies": {3},
        "min.insync.replicas": "2",
    }
    await posts_cross_nodes(settings, clustered_run.nodes)
    await asyncio.to_thread(stop_and_see_everything_gone, clustered_run)


async def posts_cross_nodes(settings: Settings, nodes: dict[str, list[int]]) -> None:
    """A post through either API server reaches a follower on either gateway, live."""
    servers = [f"http://127.0.0.1:{port}" for port in nodes["server"]]
    author, *readers = await made_in_postgres(settings, 3)
    start = min_id_for_ms(int(time.time() * 1000))
    followers = [
        Follower(user, start, url=f"ws://127.0.0.1:{port}/v1/stream")
        for user, port in zip(readers, nodes["gateway"], strict=True)
    ]
    async with aiohttp.ClientSession() as session:
        for user, base in zip(readers, servers, strict=True):
            url = f"{base}/v1/users/{author.id}/follow"
            await call(session, "POST", url, 200, headers=user.auth)
        listening = [asyncio.create_task(f.listen(session, f.url)) for f in followers]
        try:
            posted = [
                (
                    await call(
                        session,
                        "POST",
                        f"{base}/v1/posts",
                        201,
                        json={"text": f"through {base}"},
                        headers=author.auth,
                    )
                )["post_id"]
                for base in servers
            ]

            async def delivered() -> bool:
                return all(sorted(f.posts) == sorted(posted) for f in followers)

            await eventually(delivered, seconds=60, what="both posts on both gateways")
        finally:
            for task in listening:
                task.cancel()
            await asyncio.gather(*listening, return_exceptions=True)
