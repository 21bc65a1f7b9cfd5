#!/usr/bin/env python3
"""Local development stack: PostgreSQL, Redis, Apache Kafka and an S3-compatible object
store (s3proxy) as our own processes.

Usage:
    python3 scripts/stack.py start|stop|restart|status|env
        [postgres|postgres-replica|redis|kafka|s3 ...]

No service names means all five (started in the order postgres, postgres-replica, redis,
kafka, s3 and stopped in reverse order). postgres-replica is a streaming standby of the
local postgres (pg_basebackup -R, a physical replication slot), read through
DATABASE_READ_URL.  Data, logs and pid files live under the project-local,
git-ignored directory ``.stack/`` (project root = parent of ``scripts/``).

This script runs before any virtualenv exists, so it uses only the Python 3.11
standard library.  It is idempotent (``start`` on a running stack is a no-op),
waits for real readiness, and reports every expected problem as one
``stack: error: ...`` line on stderr with exit status 1.

Commands:
    start    start what is not running, wait until ready
    stop     stop local services (and kill any stray process running from .stack)
    restart  stop, then start
    status   one line per service; exit 0 if all are up, 3 otherwise
    env      print ``export DATABASE_URL=... DATABASE_READ_URL=... REDIS_URL=...
             KAFKA_BOOTSTRAP=...`` and the object store's S3_ENDPOINT, S3_BUCKET,
             S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY

Settings (environment variables, all optional):
    STACK_DIR                    data directory (default: <project>/.stack)
    STACK_PG_PORT                PostgreSQL port (default: 55432)
    STACK_PG_REPLICA_PORT        its streaming standby's port (default: 55433)
    STACK_REDIS_PORT             Redis port (default: 56379)
    STACK_KAFKA_PORT             Kafka broker (PLAINTEXT) port (default: 59092)
    STACK_KAFKA_CONTROLLER_PORT  Kafka KRaft controller port (default: 59093)
    STACK_KAFKA_HEAP             Kafka JVM max heap, -Xmx value (default: 768m)
    STACK_S3_PORT                S3-compatible object store (s3proxy) port (default: 59000)
    STACK_START_TIMEOUT          seconds to wait for each service to be ready (default: 90)
    STACK_REDIS_PERSIST          yes (default): Redis keeps its data in an append-only file
                                 (fsync every second), so a restart is not a cold start;
                                 no: nothing is written to disk
    STACK_DEBUG                  set to 1 to get a traceback on unexpected errors
    DATABASE_URL                 if set, PostgreSQL is external (postgresql:// or postgres://):
                                 nothing is started or stopped, it is only checked/reported
    DATABASE_READ_URL            if set, the read replica is external (checked, reported);
                                 with an external DATABASE_URL and no DATABASE_READ_URL, no
                                 replica is started and reads go to the primary
    REDIS_URL                    if set, Redis is external (redis:// or rediss://)
    KAFKA_BOOTSTRAP              if set, Kafka is external (host:port[,host:port...])
    S3_ENDPOINT                  if set, the object store is external (http(s)://host[:port]);
                                 S3_BUCKET, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY go with it,
                                 and its bucket is created by `python -m core.bootstrap`

Everything local binds to 127.0.0.1, and run as root, ``start`` adds the local ports to
the kernel's reserved ports (net.ipv4.ip_local_reserved_ports), so that no outgoing
connection is ever given one of them.  The local endpoints are:
    postgresql://feed:feed@127.0.0.1:<STACK_PG_PORT>/feed
    postgresql://feed:feed@127.0.0.1:<STACK_PG_REPLICA_PORT>/feed  (read-only standby)
    redis://127.0.0.1:<STACK_REDIS_PORT>/0
    127.0.0.1:<STACK_KAFKA_PORT>
    http://127.0.0.1:<STACK_S3_PORT>  (bucket feed-media, key feed-local / feed-local-secret)

Kafka jars come from Maven Central only, via ``mvn`` and scripts/kafka/pom.xml; the object
store's (s3proxy with its filesystem backend: objects are files under .stack/s3/data/)
likewise via scripts/s3/pom.xml.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, unquote

SCRIPTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = SCRIPTS_DIR.parent
KAFKA_POM = SCRIPTS_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = SCRIPTS_DIR / "kafka" / "log4j.properties"
S3_POM = SCRIPTS_DIR / "s3" / "pom.xml"
S3_LOGBACK = SCRIPTS_DIR / "s3" / "logback.xml"
# The local object store's fixed bucket and development credentials (not secrets: the
# store listens on loopback only; production sets S3_* to its own).
S3_BUCKET = "feed-media"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "feed-local"
S3_SECRET_KEY = "feed-local-secret"  # noqa: S105 - documented development default

HOST = "127.0.0.1"
SERVICE_ORDER = ("postgres", "postgres-replica", "redis", "kafka", "s3")
POLL_INTERVAL = 0.2
STOP_GRACE_SECONDS = 30.0
EXTERNAL_WAIT_SECONDS = 5.0
LOG_TAIL_LINES = 15

# The broker logs this exact text (kafka.server.KafkaRaftServer, INFO) once the
# broker and controller are both up and serving; verified against Kafka 3.9.1:
#   [...] INFO [KafkaRaftServer nodeId=1] Kafka Server started (kafka.server.KafkaRaftServer)
KAFKA_STARTED_MARKER = "Kafka Server started"


class StackError(Exception):
    """An expected problem: reported as one `stack: error:` line, exit status 1."""


# --------------------------------------------------------------------------- output


def say(message: str) -> None:
    # Flushed immediately: this is often piped or run under CI, and progress
    # lines must appear before a 60 s wait, not after it.
    print(f"stack: {message}", flush=True)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """`last lines of <path>:` + content, for error messages about dead services."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc.strerror})"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"(log {path} is empty)"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in tail)


# --------------------------------------------------------------------------- settings


def env_int(name: str, default: int, low: int = 1, high: int = 65535) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise StackError(f"{name}={value} is out of range ({low}..{high})")
    return value


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "yes", "true", "on"):
        return True
    if raw in ("0", "no", "false", "off"):
        return False
    raise StackError(f"{name} must be yes or no, not {raw!r}")


def env_timeout() -> float:
    raw = os.environ.get("STACK_START_TIMEOUT", "").strip()
    if not raw:
        return 90.0
    try:
        value = float(raw)
    except ValueError:
        raise StackError(f"STACK_START_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise StackError("STACK_START_TIMEOUT must be > 0")
    return value


def heap_megabytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", heap)
    if not match:
        raise StackError(f"STACK_KAFKA_HEAP={heap!r} is not a JVM size like 768m or 1g")
    number, unit = int(match.group(1)), match.group(2).lower()
    return {"": number // (1024 * 1024), "k": number // 1024, "m": number, "g": number * 1024}[unit]


@dataclass(frozen=True)
class Settings:
    stack_dir: Path
    pg_port: int
    redis_port: int
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str
    start_timeout: float
    redis_persist: bool = True
    s3_port: int = 59000
    pg_replica_port: int = 55433

    @classmethod
    def from_env(cls) -> Settings:
        stack_dir = Path(os.environ.get("STACK_DIR") or PROJECT_DIR / ".stack")
        # Absolute, but not symlink-resolved: the stray-process sweep looks for this
        # exact string in command lines, and the user expects to see the path they gave.
        stack_dir = Path(os.path.abspath(stack_dir))
        settings = cls(
            stack_dir=stack_dir,
            pg_port=env_int("STACK_PG_PORT", 55432),
            redis_port=env_int("STACK_REDIS_PORT", 56379),
            kafka_port=env_int("STACK_KAFKA_PORT", 59092),
            kafka_controller_port=env_int("STACK_KAFKA_CONTROLLER_PORT", 59093),
            kafka_heap=os.environ.get("STACK_KAFKA_HEAP", "").strip() or "768m",
            start_timeout=env_timeout(),
            redis_persist=env_flag("STACK_REDIS_PERSIST", default=True),
            s3_port=env_int("STACK_S3_PORT", 59000),
            pg_replica_port=env_int("STACK_PG_REPLICA_PORT", 55433),
        )
        settings.check_ports_distinct()
        heap_megabytes(settings.kafka_heap)  # validate early, before anything starts
        return settings

    def check_ports_distinct(self) -> None:
        ports = {
            "STACK_PG_PORT": self.pg_port,
            "STACK_PG_REPLICA_PORT": self.pg_replica_port,
            "STACK_REDIS_PORT": self.redis_port,
            "STACK_KAFKA_PORT": self.kafka_port,
            "STACK_KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "STACK_S3_PORT": self.s3_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise StackError(
                    f"{seen[port]} and {name} are both {port}; give each service its own port"
                )
            seen[port] = name


# --------------------------------------------------------------------------- processes & ports


def is_root() -> bool:
    return os.geteuid() == 0


def guarded_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in `pidfile` if that process's command line has `marker`: a pidfile left
    by a crash or a reboot may name a pid since reused by another process."""
    pid = read_pidfile(pidfile)
    return pid if pid and marker in proc_cmdline(pid) else None


def pid_alive(pid: int | None) -> bool:
    """True if `pid` exists and is not a zombie.

    Zombies matter here: in containers PID 1 often does not reap orphans, so a
    dead daemon can linger as <defunct> and os.kill(pid, 0) would still succeed.
    """
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised comm, which may itself contain spaces).
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def proc_ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[-1].split()[1])


def read_pidfile(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listen_sockets() -> dict[str, int]:
    """{'socket:[inode]': port} for every listening TCP socket (IPv4 and IPv6)."""
    sockets: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A":  # 0A = LISTEN
                sockets[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    return sockets


def pid_socket_links(pid: int) -> list[str]:
    links = []
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                continue
    except OSError:
        pass
    return links


def listening_pids(port: int) -> list[int]:
    """PIDs holding a listening TCP socket on `port` (best effort, via /proc).

    Only used to make the "port in use" error say *who* holds the port.
    """
    wanted = {link for link, p in listen_sockets().items() if p == port}
    if not wanted:
        return []
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and wanted.intersection(pid_socket_links(int(entry.name)))
    ]


def pid_listen_ports(pid: int) -> set[int]:
    """Ports `pid` listens on: tells "still starting" apart from "running on another port"."""
    sockets = listen_sockets()
    return {sockets[link] for link in pid_socket_links(pid) if link in sockets}


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_ports(ports: list[int]) -> None:
    """Keeps the kernel from handing these ports to outgoing connections. The defaults
    lie inside Linux's ephemeral range (32768-60999), so a client socket can hold one
    for a moment, and a service (re)started just then cannot bind it ("address already
    in use"): the outage tests restart services mid-suite, after thousands of
    connections. Reserved ports can still be bound explicitly. Root only (the setting is
    the machine's); otherwise nothing changes."""
    try:
        current = RESERVED_PORTS.read_text().strip()
        reserved: set[int] = set()
        for part in filter(None, current.split(",")):
            low, _, high = part.partition("-")
            reserved.update(range(int(low), int(high or low) + 1))
        missing = sorted(set(ports) - reserved)
        if missing:
            RESERVED_PORTS.write_text(",".join(filter(None, [current, *map(str, missing)])))
    except (OSError, ValueError):  # not root, or /proc/sys read-only (a container)
        pass


def port_in_use_error(service: str, port: int, setting: str) -> StackError:
    holders = [f"pid {pid}: {proc_cmdline(pid)[:80]}" for pid in listening_pids(port)]
    who = f" ({'; '.join(holders)})" if holders else ""
    return StackError(
        f"{service}: port {port} on {HOST} is in use by another process; "
        f"set {setting} to a free port{who}"
    )


def own_ancestry() -> set[int]:
    """Our pid and our ancestors: never kill these in the stray sweep."""
    pids, pid = set(), os.getpid()
    while pid > 0 and pid not in pids:
        pids.add(pid)
        pid = proc_ppid(pid)
    return pids


def find_stray_pids(needles: list[str]) -> list[int]:
    """Processes whose command line mentions one of `needles`, plus their descendants.

    Descendants are included because PostgreSQL backends rewrite their title
    ("postgres: checkpointer") and so never show the data directory themselves.
    """
    protected = own_ancestry()
    parents: dict[int, int] = {}
    matched: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        parents[pid] = proc_ppid(pid)
        if pid in protected or not pid_alive(pid):
            continue
        cmdline = proc_cmdline(pid)
        if any(needle in cmdline for needle in needles):
            matched.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in matched and pid not in matched and pid not in protected and pid_alive(pid):
                matched.add(pid)
                grew = True
    return sorted(matched)


def terminate(pids: list[int], grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the pids that needed SIGKILL."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    killed = [pid for pid in pids if pid_alive(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def sweep_strays(label: str, needles: list[str], *, quiet: bool = False) -> None:
    strays = find_stray_pids(needles)
    if not strays:
        return
    for pid in strays:
        if not quiet:
            say(f"{label}: killing stray process {pid} ({proc_cmdline(pid)[:100]})")
    terminate(strays, grace=5.0)


def run(
    cmd: list[str],
    *,
    what: str,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure raise a StackError quoting its last lines."""
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            input=input_text,
            text=True,
            timeout=timeout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise StackError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise StackError(
            f"{what}: `{shlex.join(cmd)}` did not finish within {timeout:.0f} s"
        ) from None
    if check and result.returncode != 0:
        tail = "\n".join(
            "    " + line for line in result.stdout.strip().splitlines()[-LOG_TAIL_LINES:]
        )
        raise StackError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{tail}")
    return result


_apt_updated = False


def apt_install(package: str) -> None:
    """Install a Debian package (root only). `apt-get update` only if the first try fails."""
    global _apt_updated
    say(f"installing {package} with apt-get (missing on this machine)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", package]
    if run(cmd, what=f"apt-get install {package}", env=env, check=False).returncode == 0:
        return
    if not _apt_updated:
        run(["apt-get", "update"], what="apt-get update", env=env)
        _apt_updated = True
    run(cmd, what=f"apt-get install {package}", env=env)


def require_binary(name: str, package: str, *, auto_install: bool) -> str:
    path = shutil.which(name)
    if path:
        return path
    if auto_install and is_root():
        apt_install(package)
        path = shutil.which(name)
        if path:
            return path
    raise StackError(f"{name} not found; install it with: apt-get install {package}")


def wait_until(
    ready: Callable[[], bool], *, alive: Callable[[], bool], timeout: float, name: str, log: Path
) -> None:
    """Poll `ready` every 0.2 s; fail early (with the log) if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not alive():
            raise StackError(f"{name} exited during startup; {log_tail(log)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} did not become ready within {timeout:.0f} s "
                f"(raise STACK_START_TIMEOUT if the machine is slow); {log_tail(log)}"
            )
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- endpoints & URLs


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    unix_socket: str | None = None  # libpq ?host=/dir URLs point at a unix socket

    def __str__(self) -> str:
        if self.unix_socket:
            return self.unix_socket
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connect(self, timeout: float = 2.0) -> socket.socket:
        if self.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_socket)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock


# Protocol probes for external servers. A bare TCP connect is not proof: proxies
# and sandboxes (this one included) accept connections to any address and then
# answer with an HTTP error, so each probe requires a reply only the real server
# would give.


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe_postgres(sock: socket.socket) -> bool:
    # SSLRequest: the server answers one byte, 'S' or 'N' (or 'E' from very old servers).
    sock.sendall(struct.pack("!ii", 8, 80877103))
    return recv_exactly(sock, 1) in (b"S", b"N", b"E")


def probe_redis(sock: socket.socket) -> bool:
    # Any RESP reply counts: "+PONG", or "-NOAUTH ..." from a password-protected server.
    sock.sendall(b"PING\r\n")
    return recv_exactly(sock, 1) in (b"+", b"-")


def probe_kafka(sock: socket.socket) -> bool:
    # ApiVersions v0 (api key 18); every broker since 0.10 answers it, echoing our correlation id.
    client_id = b"stack.py"
    body = struct.pack("!hhih", 18, 0, 0x5EED, len(client_id)) + client_id
    sock.sendall(struct.pack("!i", len(body)) + body)
    header = recv_exactly(sock, 8)
    return len(header) == 8 and struct.unpack("!ii", header)[1] == 0x5EED


def endpoint_answers(
    endpoint: Endpoint, probe: Callable[[socket.socket], bool], tls: bool = False
) -> bool:
    try:
        with endpoint.connect() as raw:
            if tls:
                # rediss://: we only check that a TLS server is there, not who it is.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                with context.wrap_socket(raw, server_hostname=endpoint.host) as sock:
                    return probe(sock)
            return probe(raw)
    except (OSError, ValueError, struct.error):
        return False


def parse_hostports(text: str, default_port: int, var: str) -> list[Endpoint]:
    """Parse `host[:port][,host[:port]...]`, IPv6 literals in brackets."""
    endpoints: list[Endpoint] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]*)(?::(\d+))?", item)
        if not match:
            raise StackError(f"{var}: cannot parse host {item!r}")
        host = match.group(1) or match.group(3) or "localhost"
        port_text = match.group(2) or match.group(4)
        port = int(port_text) if port_text else default_port
        if not 0 < port < 65536:
            raise StackError(f"{var}: port {port} out of range")
        endpoints.append(Endpoint(unquote(host), port))
    if not endpoints:
        raise StackError(f"{var}: no host given")
    return endpoints


@dataclass(frozen=True)
class ParsedUrl:
    endpoints: list[Endpoint]
    masked: str


def parse_url(url: str, schemes: tuple[str, ...], default_port: int, var: str) -> ParsedUrl:
    """Parse a postgresql:// or redis:// URL without urllib's single-host limitation."""
    match = re.fullmatch(
        r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?", url.strip()
    )
    if not match or match.group(1).lower() not in schemes:
        raise StackError(
            f"{var} must be a {' or '.join(s + '://' for s in schemes)} URL (got {mask_url(url)!r})"
        )
    scheme, netloc, path, query = (
        match.group(1),
        match.group(2),
        match.group(3),
        match.group(4) or "",
    )
    userinfo, _, hostlist = netloc.rpartition("@")
    masked_userinfo = userinfo
    if ":" in userinfo:
        masked_userinfo = userinfo.split(":", 1)[0] + ":****"
    masked = (
        f"{scheme}://{masked_userinfo + '@' if userinfo else ''}{hostlist}{path}{mask_query(query)}"
    )

    params = parse_qs(query.lstrip("?"))
    socket_dir = (params.get("host") or [""])[0]
    if not hostlist and socket_dir.startswith("/"):
        # libpq form: postgresql:///db?host=/var/run/postgresql[&port=5433]
        port = int((params.get("port") or [default_port])[0])
        return ParsedUrl([Endpoint("localhost", port, f"{socket_dir}/.s.PGSQL.{port}")], masked)
    return ParsedUrl(parse_hostports(hostlist or "localhost", default_port, var), masked)


def mask_query(query: str) -> str:
    return re.sub(r"(?i)(password=)[^&]*", r"\1****", query)


def mask_url(url: str) -> str:
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:****@", url)
    return mask_query(masked)


# --------------------------------------------------------------------------- service interface


@dataclass
class Status:
    name: str
    # running | stopped | unresponsive | external-reachable | external-UNREACHABLE | not-used
    state: str
    where: str
    pid: int | None = None

    @property
    def up(self) -> bool:
        # not-used: no standby for an external primary, and none is needed.
        return self.state in ("running", "external-reachable", "not-used")


class Service:
    """The tiny interface every service implements (local or external)."""

    name: str

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def status(self) -> Status:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def env_line(self) -> str:
        raise NotImplementedError


class ExternalService(Service):
    """A server we do not own (DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP is set)."""

    def __init__(
        self,
        name: str,
        var: str,
        value: str,
        parsed: ParsedUrl,
        probe: Callable[[socket.socket], bool],
        tls: bool = False,
    ) -> None:
        self.name, self.var, self.value, self.parsed = name, var, value, parsed
        self.probe, self.tls = probe, tls

    def is_ready(self) -> bool:
        # One answering bootstrap server is enough for clients to find the rest.
        return any(endpoint_answers(e, self.probe, self.tls) for e in self.parsed.endpoints)

    def start(self) -> None:
        deadline = time.monotonic() + EXTERNAL_WAIT_SECONDS
        while not self.is_ready():
            if time.monotonic() >= deadline:
                where = ",".join(str(e) for e in self.parsed.endpoints)
                raise StackError(f"{self.var} points at {where} but nothing answers there")
            time.sleep(POLL_INTERVAL)
        say(f"{self.name} is external ({self.var}), reachable at {self.parsed.masked}")

    def stop(self) -> None:
        say(f"{self.name} is external ({self.var}); not stopping it")

    def status(self) -> Status:
        state = "external-reachable" if self.is_ready() else "external-UNREACHABLE"
        return Status(self.name, state, self.parsed.masked)

    def env_line(self) -> str:
        return f"export {self.var}={shlex.quote(self.value)}"


class LocalService(Service):
    """Shared logic for the services we run ourselves."""

    port: int
    port_setting: str
    env_var: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.stack_dir / self.name

    # The pidfile the service's process writes, and a word of that process's command line.
    pidfile: Path
    process_marker: str

    def pid(self) -> int | None:
        return guarded_pid(self.pidfile, self.process_marker)

    # -- to implement per service

    def url(self) -> str:
        raise NotImplementedError

    def masked_url(self) -> str:
        return mask_url(self.url())

    def extra_ports(self) -> dict[int, str]:
        return {}

    def launch(self) -> None:
        """Start the process (preparing files first); return without waiting."""
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def shutdown(self, pid: int) -> None:
        raise NotImplementedError

    # -- shared behaviour
    def running(self) -> bool:
        return pid_alive(self.pid()) and port_answers(HOST, self.port)

    def check_ports_free(self) -> None:
        ports = {self.port: self.port_setting, **self.extra_ports()}
        for port, setting in ports.items():
            if port_answers(HOST, port):
                raise port_in_use_error(self.name, port, setting)
        reserve_ports(list(ports))  # ours from now on (not someone else's port in use)

    def start(self) -> None:
        if self.running():
            if self.is_ready():
                say(f"{self.name} already running on {HOST}:{self.port}")
                return
            # Ours and alive, but not ready yet (e.g. another `start` is still
            # bringing it up, or a previous one was interrupted): wait / finish.
            say(f"{self.name}: process {self.pid()} is up but not ready yet, waiting...")
            began = time.monotonic()
            self.wait_ready()
            say(f"{self.name} ready on {HOST}:{self.port} ({time.monotonic() - began:.1f} s)")
            return
        if pid_alive(self.pid()):
            self.check_not_moved()
            # Alive but its port is silent: starting up, or wedged. Give it the
            # normal start window before declaring it broken.
            say(f"{self.name}: process {self.pid()} exists but does not answer yet, waiting...")
            began = time.monotonic()
            self.wait_ready()
            say(f"{self.name} ready on {HOST}:{self.port} ({time.monotonic() - began:.1f} s)")
            return
        self.check_ports_free()
        began = time.monotonic()
        try:
            self.launch()
            self.wait_ready()
        except StackError:
            # Never leave a half-started process behind: the next `start` would
            # mistake it for a healthy one (or find the port taken).
            self.cleanup_failed_start()
            raise
        say(f"{self.name} ready on {HOST}:{self.port} ({time.monotonic() - began:.1f} s)")

    def cleanup_failed_start(self) -> None:
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            self.shutdown(pid)
        sweep_strays(self.name, self.stray_needles(), quiet=True)

    def check_not_moved(self) -> None:
        """Our process is alive but silent on our port: was it started with another port?"""
        pid = self.pid()
        ports = pid_listen_ports(pid) if pid else set()
        if ports and self.port not in ports:
            listed = ", ".join(str(p) for p in sorted(ports))
            raise StackError(
                f"{self.name} is already running (pid {pid}) but listens on {listed}, "
                f"not {self.port}; "
                f"run `python3 scripts/stack.py restart {self.name}` to move it to {self.port}, "
                f"or set {self.port_setting} back"
            )

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            say(f"stopping {self.name} (pid {pid})...")
            self.shutdown(pid)
            say(f"{self.name} stopped")
        else:
            say(f"{self.name} is not running")
        # Whatever the shutdown path did, nothing started from our directory may survive.
        sweep_strays(self.name, self.stray_needles())

    def stray_needles(self) -> list[str]:
        needles = {f"{self.home}/"}
        real = os.path.realpath(self.home)
        needles.add(f"{real}/")
        return sorted(needles)

    def status(self) -> Status:
        pid = self.pid()
        alive = pid_alive(pid)
        answering = port_answers(HOST, self.port)
        if alive and answering:
            state = "running"
        elif alive:
            state = "unresponsive"
        else:
            state, pid = "stopped", None
        where = self.masked_url()
        if alive and not answering and pid:
            ports = pid_listen_ports(pid)
            if ports:
                where += f" (but it listens on {', '.join(str(p) for p in sorted(ports))})"
        if not alive and answering:
            where += f" (port {self.port} is taken by another process)"
        return Status(self.name, state, where, pid)

    def env_line(self) -> str:
        return f"export {self.env_var}={shlex.quote(self.url())}"


# --------------------------------------------------------------------------- PostgreSQL


def newest_pg_bindir() -> Path | None:
    candidates = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            version = tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            continue
        if (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            candidates.append((version, bindir))
    if candidates:
        return max(candidates)[1]
    pg_ctl = shutil.which("pg_ctl")
    return Path(os.path.realpath(pg_ctl)).parent if pg_ctl else None


def pg_env() -> dict[str, str]:
    # Drop PG* variables from the user's shell (PGHOST, PGSSLMODE, PGDATABASE...):
    # they would silently redirect our admin psql calls somewhere else.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def c_utf8_available() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip().lower() in ("c.utf8", "c.utf-8") for line in out.splitlines())


class Postgres(LocalService):
    name = "postgres"
    port_setting = "STACK_PG_PORT"
    env_var = "DATABASE_URL"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.port = settings.pg_port
        self._bindir: Path | None = None

    # Paths handed to the postgres OS user go through the *resolved* home: when
    # .stack/postgres is a symlink out of an untraversable tree (e.g. /root), the
    # symlink path itself is unreachable for that user; only its target works.
    @property
    def real_home(self) -> Path:
        return Path(os.path.realpath(self.home))

    @property
    def data(self) -> Path:
        return self.real_home / "data"

    @property
    def run_dir(self) -> Path:
        return self.real_home / "run"

    @property
    def log(self) -> Path:
        return self.real_home / "postgres.log"

    def url(self) -> str:
        return f"postgresql://feed:feed@{HOST}:{self.port}/feed"

    def pid(self) -> int | None:
        return guarded_pid(self.data / "postmaster.pid", "postgres")  # postgres writes it

    @property
    def as_postgres_user(self) -> bool:
        # PostgreSQL refuses to run as root, so root delegates to the `postgres` user.
        return is_root()

    def bindir(self) -> Path:
        if self._bindir is None:
            bindir = newest_pg_bindir()
            if bindir is None:
                if not is_root():
                    raise StackError(
                        "PostgreSQL server binaries not found; "
                        "install them with: apt-get install postgresql"
                    )
                apt_install("postgresql")
                bindir = newest_pg_bindir()
                if bindir is None:
                    raise StackError(
                        "apt-get install postgresql succeeded "
                        "but no /usr/lib/postgresql/<ver>/bin/pg_ctl exists"
                    )
            self._bindir = bindir
        return self._bindir

    def tool(self, name: str) -> str:
        return str(self.bindir() / name)

    def as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres_user else cmd

    def owner_can(self, path: Path, test_flag: str) -> bool:
        if not self.as_postgres_user:
            return True
        # cwd="/" so runuser does not complain about an unreachable cwd like /root.
        result = subprocess.run(
            self.as_owner(["test", test_flag, str(path)]),
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    # -- directory layout
    def ensure_postgres_user(self) -> None:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            say("creating system user postgres")
            run(
                [
                    "useradd",
                    "--system",
                    "--home-dir",
                    "/var/lib/postgresql",
                    "--shell",
                    "/bin/bash",
                    "--user-group",
                    "postgres",
                ],
                what="useradd postgres",
            )

    def chown_to_owner(self, path: Path) -> None:
        if self.as_postgres_user:
            shutil.chown(path, "postgres", "postgres")

    def fallback_home(self) -> Path:
        # sha1 is only a stable directory name here, not a security measure.
        key = str(PROJECT_DIR)
        if self.settings.stack_dir != PROJECT_DIR / ".stack":
            # Different STACK_DIRs of the same project must not share a cluster.
            key = str(self.settings.stack_dir)
        digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:12]
        return Path("/var/lib/feed-stack") / digest / self.name

    def prepare_home(self) -> None:
        """Make `.stack/postgres` a directory the postgres user can write.

        When root runs the stack from a tree the postgres user cannot traverse
        (e.g. /root is mode 700), the real directory lives under
        /var/lib/feed-stack/<sha1(project)[:12]>/postgres and `.stack/postgres`
        is a symlink to it.
        """
        self.settings.stack_dir.mkdir(parents=True, exist_ok=True)
        if self.as_postgres_user:
            self.ensure_postgres_user()
        if self.home.is_symlink():
            target = Path(os.path.realpath(self.home))
            target.mkdir(parents=True, exist_ok=True)
            self.chown_to_owner(target)
        else:
            self.home.mkdir(exist_ok=True)
            self.chown_to_owner(self.home)
            if not (self.owner_can(self.home, "-x") and self.owner_can(self.home, "-w")):
                self.relocate_home()
        for sub in (self.run_dir,):
            sub.mkdir(exist_ok=True)
            self.chown_to_owner(sub)
        if not (self.owner_can(self.real_home, "-x") and self.owner_can(self.real_home, "-w")):
            raise StackError(
                f"postgres: the postgres OS user cannot write {self.real_home}; "
                "check its permissions"
            )

    def relocate_home(self) -> None:
        if any(self.home.iterdir()):
            raise StackError(
                f"postgres: the postgres OS user cannot reach {self.home}, "
                "and it already holds data; "
                f"move it to {self.fallback_home()} and replace it with a symlink, or delete it"
            )
        target = self.fallback_home()
        say(
            f"postgres: the postgres user cannot reach {self.home}; "
            f"keeping its data in {target} (symlinked)"
        )
        target.mkdir(parents=True, exist_ok=True)
        # Parents must be traversable by postgres even under a restrictive umask.
        for parent in (target.parent, target.parent.parent):
            os.chmod(parent, 0o755)  # noqa: S103 - only directory names, the data dir itself is 0700
        os.chmod(target, 0o700)
        self.chown_to_owner(target)
        self.home.rmdir()
        self.home.symlink_to(target)

    # -- cluster
    def initdb(self) -> None:
        version_file = self.data / "PG_VERSION"
        if version_file.exists():
            have = version_file.read_text().strip()
            want = self.bindir().parent.name
            if have != want:
                raise StackError(
                    f"postgres: {self.data} was created by PostgreSQL {have} "
                    f"but {want} is installed; "
                    f"delete {self.home} to re-create it (its data will be lost)"
                )
            return
        if self.data.exists() and any(self.data.iterdir()):
            raise StackError(
                f"postgres: {self.data} is not empty but has no PG_VERSION; "
                "delete it to re-create the cluster"
            )
        locale = "C.UTF-8" if c_utf8_available() else "C"
        say(f"postgres: initializing a new cluster in {self.data} (locale {locale})")
        # --auth=trust: local dev stack, listening on 127.0.0.1 only, so anyone who
        # can connect is already on this machine. Trust on loopback is acceptable here.
        cmd = [
            self.tool("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            f"--locale={locale}",
        ]
        run(self.as_owner(cmd), what="initdb", cwd="/", timeout=300)

    def write_config(self) -> None:
        """(Re)write our settings each start, so a changed STACK_PG_PORT takes effect."""
        settings = (
            "# Written by scripts/stack.py on every start; edit the script, not this file.\n"
            f"listen_addresses = '{HOST}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir()}'\n"
            "max_connections = 300\n"
            "shared_buffers = 256MB\n"
            "fsync = on\n"
            # Streaming replication to postgres-replica (PostgresReplica). These are
            # PostgreSQL's defaults since 10, written out so that an older cluster's
            # own postgresql.conf cannot turn them off. A slot keeps the WAL a stopped
            # standby still needs, up to max_slot_wal_keep_size: past it the slot is
            # lost and the standby is cloned again, rather than filling the disk.
            "wal_level = replica\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "max_slot_wal_keep_size = 2GB\n"
            f"{self.extra_config()}"
        )
        stack_conf = self.data / "stack.conf"
        stack_conf.write_text(settings)
        self.chown_to_owner(stack_conf)
        main_conf = self.data / "postgresql.conf"
        include = "include_if_exists = 'stack.conf'"
        text = main_conf.read_text()
        if include not in text:
            # Included last so our values win over initdb's defaults.
            main_conf.write_text(
                text.rstrip("\n") + f"\n\n# Added by scripts/stack.py\n{include}\n"
            )

    def extra_config(self) -> str:
        return ""

    def socket_dir(self) -> str:
        # A unix socket path is limited to 107 bytes; deep project paths would make
        # postgres refuse to start, so fall back to /tmp (the port keeps it distinct
        # from a system cluster, which uses /var/run/postgresql and port 5432).
        path = str(self.run_dir)
        return path if len(f"{path}/.s.PGSQL.{self.port}") < 100 else "/tmp"  # noqa: S108

    def launch(self) -> None:
        self.prepare_home()
        self.initdb()
        self.write_config()
        timeout = max(1, int(self.settings.start_timeout))
        say(f"starting postgres on {HOST}:{self.port} (log: {self.log})")
        cmd = [
            self.tool("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(timeout),
            "start",
        ]
        result = run(
            self.as_owner(cmd), what="pg_ctl start", cwd="/", timeout=timeout + 30, check=False
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres failed to start (pg_ctl exit {result.returncode}); {log_tail(self.log)}"
            )
        self.bootstrap()

    def prepare_replication(self) -> str:
        """Make the running primary accept a streaming standby, without a restart (it
        may be serving others): our settings re-applied (a cluster from an older stack
        started without them), the loopback replication rule in pg_hba.conf, both
        reloaded. Returns `<system identifier> <port>`, which names this primary."""
        level = self.psql("SHOW wal_level;").stdout.strip()
        if level == "minimal":
            raise StackError(
                "postgres: wal_level is minimal, so no standby can follow it; "
                "run `python3 scripts/stack.py restart postgres` to apply wal_level = replica"
            )
        self.write_config()
        hba = self.data / "pg_hba.conf"
        rules = hba.read_text()
        if REPLICATION_HBA not in rules.splitlines():
            hba.write_text(
                rules.rstrip("\n") + f"\n\n# Added by scripts/stack.py\n{REPLICATION_HBA}\n"
            )
        self.psql("SELECT pg_reload_conf();")
        sysid = self.psql("SELECT system_identifier FROM pg_control_system();").stdout.strip()
        return f"{sysid} {self.port}"

    def psql(self, sql: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Superuser over TCP with trust auth (see initdb) - no password needed.
        cmd = [
            self.tool("psql"),
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            "-",
        ]
        return run(cmd, what="psql", env=pg_env(), input_text=sql, timeout=60, check=check)

    def bootstrap(self) -> None:
        """Create role feed and database feed, idempotently."""
        self.psql(
            "DO $$ BEGIN\n"
            "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'feed') THEN\n"
            "    CREATE ROLE feed LOGIN PASSWORD 'feed' CREATEDB;\n"
            "  END IF;\n"
            "END $$;\n"
            # CREATE DATABASE cannot run inside DO, hence the \gexec trick.
            "SELECT 'CREATE DATABASE feed OWNER feed' "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'feed')\\gexec\n"
        )

    def feed_db_exists(self) -> bool:
        result = self.psql("SELECT 1 FROM pg_database WHERE datname = 'feed';", check=False)
        return result.returncode == 0 and result.stdout.strip() == "1"

    def accepting(self) -> bool:
        ready = subprocess.run(
            [self.tool("pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "2"],
            env=pg_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return ready.returncode == 0

    def is_ready(self) -> bool:
        return self.accepting() and self.feed_db_exists()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.accepting():
                return False
            if not self.feed_db_exists():
                # Accepting but bootstrap missing (e.g. an interrupted first start): finish it.
                self.bootstrap()
            return self.feed_db_exists()

        wait_until(
            ready,
            alive=lambda: pid_alive(self.pid()),
            timeout=self.settings.start_timeout,
            name="postgres",
            log=self.log,
        )

    def shutdown(self, pid: int) -> None:
        cmd = [
            self.tool("pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-w",
            "-t",
            str(int(STOP_GRACE_SECONDS)),
            "stop",
        ]
        result = run(
            self.as_owner(cmd),
            what="pg_ctl stop",
            cwd="/",
            timeout=STOP_GRACE_SECONDS + 30,
            check=False,
        )
        if result.returncode != 0 and pid_alive(pid):
            reason = (result.stdout.strip().splitlines() or ["no output"])[-1]
            say(f"postgres: pg_ctl stop failed ({reason}); killing pid {pid}")
            terminate([pid], grace=5.0)


# --------------------------------------------------------------------------- PostgreSQL standby

REPLICA_SLOT = "feed_stack_replica"
# What the standby answers to on the primary: loopback only, like everything else here.
REPLICATION_HBA = "host replication postgres 127.0.0.1/32 trust"


class PostgresReplica(Postgres):
    """A streaming standby of the local postgres, on its own port and data directory
    (.stack/postgres-replica/): cloned once with `pg_basebackup -R` through a physical
    replication slot, then started like any cluster. Read-only; the services reach it
    through DATABASE_READ_URL.

    It is cloned again (a few seconds) whenever it could not follow the primary any
    more: the primary was re-created (another system identifier) or moved to another
    port, its slot is gone or lost (the standby was stopped for longer than
    max_slot_wal_keep_size of writes), or the standby was promoted. It holds no data
    of its own, so a new clone loses nothing."""

    name = "postgres-replica"
    port_setting = "STACK_PG_REPLICA_PORT"
    env_var = "DATABASE_READ_URL"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.port = settings.pg_replica_port
        self.primary = Postgres(settings)

    @property
    def stamp(self) -> Path:
        """Which primary this clone follows: `<system identifier> <port>`."""
        return self.real_home / "primary"

    def extra_config(self) -> str:
        # Feedback keeps the primary's vacuum from removing rows a standby query still
        # reads (such a query would be cancelled); reads here are short. The standby
        # counts its statements (pg_stat_statements, once `CREATE EXTENSION
        # pg_stat_statements` has run in a database on the primary): which reads it
        # serves is then visible, to operators and to tests/core/test_read_replica.py.
        # A fresh clone starts with a backup_label, so its first start syncs the whole
        # data directory first: file by file (the default) took 6 s here, one syncfs()
        # a fraction of that.
        return (
            "hot_standby = on\n"
            "hot_standby_feedback = on\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "recovery_init_sync_method = syncfs\n"
        )

    def launch(self) -> None:
        if not self.primary.running() or not self.primary.accepting():
            raise StackError(
                f"postgres-replica: the primary (postgres on {HOST}:{self.primary.port}) is "
                "not running; start it first: python3 scripts/stack.py start postgres"
            )
        self.prepare_home()
        primary = self.primary.prepare_replication()
        reason = self.reclone_reason(primary)
        if reason:
            self.clone(primary, reason)
        self.write_config()
        timeout = max(1, int(self.settings.start_timeout))
        say(f"starting postgres-replica on {HOST}:{self.port} (log: {self.log})")
        cmd = [self.tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        cmd += ["-w", "-t", str(timeout), "start"]
        result = run(
            self.as_owner(cmd), what="pg_ctl start", cwd="/", timeout=timeout + 30, check=False
        )
        if result.returncode != 0:
            raise StackError(
                f"postgres-replica failed to start (pg_ctl exit {result.returncode}); "
                f"{log_tail(self.log)}"
            )

    def reclone_reason(self, primary: str) -> str | None:
        if not (self.data / "PG_VERSION").exists():
            return "first start"
        if not (self.data / "standby.signal").exists():
            return "it is no longer a standby (promoted?)"
        try:
            followed = self.stamp.read_text().strip()
        except OSError:
            followed = ""
        if followed != primary:
            return "the primary was re-created or moved"
        slot = self.primary.psql(
            f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{REPLICA_SLOT}';"
        ).stdout.strip()
        if slot in ("", "lost"):
            return f"its replication slot is {'lost' if slot else 'gone'}"
        return None

    def clone(self, primary: str, reason: str) -> None:
        say(f"postgres-replica: cloning the primary with pg_basebackup ({reason})")
        shutil.rmtree(self.data, ignore_errors=True)
        self.stamp.unlink(missing_ok=True)
        self.primary.psql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{REPLICA_SLOT}' AND NOT active;\n"
            f"SELECT pg_create_physical_replication_slot('{REPLICA_SLOT}', true) "
            f"WHERE NOT EXISTS (SELECT FROM pg_replication_slots "
            f"WHERE slot_name = '{REPLICA_SLOT}');\n"
        )
        # -R: standby.signal and primary_conninfo/primary_slot_name in
        # postgresql.auto.conf; -X stream: the WAL written during the copy comes along;
        # -c fast: no wait for the next scheduled checkpoint. --no-sync and one sync()
        # after: fsyncing file by file took 18 s of a 20 s clone of a 270 MB cluster here.
        # The stamp is written last, so a crash before it means a fresh clone next time.
        cmd = [self.tool("pg_basebackup"), "-h", HOST, "-p", str(self.primary.port)]
        cmd += ["-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"]
        cmd += ["-S", REPLICA_SLOT, "--no-sync"]
        began = time.monotonic()
        run(self.as_owner(cmd), what="pg_basebackup", cwd="/", env=pg_env(), timeout=600)
        copied = time.monotonic()
        os.sync()
        self.stamp.write_text(primary + "\n")
        say(
            f"postgres-replica: cloned in {copied - began:.1f} s, "
            f"synced to disk in {time.monotonic() - copied:.1f} s"
        )

    def is_ready(self) -> bool:
        return self.accepting() and self.feed_db_exists()

    def wait_ready(self) -> None:
        # Never bootstrap here: a standby is read-only, and it has the primary's roles
        # and databases as soon as it has replayed the base backup.
        wait_until(
            self.is_ready,
            alive=lambda: pid_alive(self.pid()),
            timeout=self.settings.start_timeout,
            name=self.name,
            log=self.log,
        )


class NoReplica(Service):
    """DATABASE_URL names an external primary and DATABASE_READ_URL is not set: no
    standby to start (a clone of someone else's database is not ours to make), and
    reads go to the primary."""

    name = "postgres-replica"

    def start(self) -> None:
        say("postgres-replica: not started (DATABASE_URL is external; reads use it)")

    def stop(self) -> None:
        say("postgres-replica: not started (DATABASE_URL is external)")

    def status(self) -> Status:
        return Status(self.name, "not-used", "reads go to DATABASE_URL")

    def env_line(self) -> str:
        return "export DATABASE_READ_URL=''"


# --------------------------------------------------------------------------- Redis


class Redis(LocalService):
    name = "redis"
    port_setting = "STACK_REDIS_PORT"
    env_var = "REDIS_URL"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.port = settings.redis_port
        self.conf = self.home / "redis.conf"
        self.pidfile = self.home / "redis.pid"
        self.log = self.home / "redis.log"

    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    process_marker = "redis"

    @property
    def persistence(self) -> str:
        if not self.settings.redis_persist:
            return 'save ""\nappendonly no\n'
        return 'save ""\nappendonly yes\nappendfsync everysec\nappenddirname "appendonly"\n'

    def write_config(self) -> None:
        self.conf.write_text(
            "# Written by scripts/stack.py on every start; edit the script, not this file.\n"
            f"port {self.port}\n"
            f"bind {HOST}\n"
            f"dir {self.home}\n"
            "daemonize yes\n"
            f"pidfile {self.pidfile}\n"
            f"logfile {self.log}\n"
            # Timelines, caches, presence and fan-out checkpoints survive a restart: an
            # append-only file, fsynced once a second (at most a second of writes lost in
            # a crash of the machine, none in a crash of Redis), and no RDB snapshots
            # besides the AOF's own base file. STACK_REDIS_PERSIST=no turns it off.
            f"{self.persistence}"
            "maxclients 10000\n"
            # Bound to loopback only, so protected mode would add nothing but friction.
            "protected-mode no\n"
            # Redis rewrites its process title; keep the config path in it so the
            # stray-process sweep (which greps command lines for .stack) can find it.
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"\n'
        )

    def launch(self) -> None:
        server = require_binary("redis-server", "redis-server", auto_install=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_config()
        # A stale pidfile would make the liveness check below look at a dead pid.
        self.pidfile.unlink(missing_ok=True)
        say(f"starting redis on {HOST}:{self.port} (log: {self.log})")
        result = run(
            [server, str(self.conf)], what="redis-server", cwd=self.home, timeout=30, check=False
        )
        if result.returncode != 0:
            output = result.stdout.strip().splitlines()[-LOG_TAIL_LINES:]
            raise StackError(
                f"redis-server failed to start (exit {result.returncode}): "
                f"{' | '.join(output)}; {log_tail(self.log)}"
            )

    def is_ready(self) -> bool:
        cli = shutil.which("redis-cli")
        if cli:
            try:
                out = subprocess.run(
                    [cli, "-h", HOST, "-p", str(self.port), "ping"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    env={k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"},
                )
            except subprocess.TimeoutExpired:
                return False
            return out.stdout.strip() == "PONG"
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def wait_ready(self) -> None:
        # With daemonize the pidfile appears slightly after redis-server returns,
        # so liveness is "pidfile not written yet, or its process still alive".
        began = time.monotonic()

        def alive() -> bool:
            return pid_alive(self.pid()) or (
                time.monotonic() - began < 5 and not self.pidfile.exists()
            )

        wait_until(
            self.is_ready,
            alive=alive,
            timeout=self.settings.start_timeout,
            name="redis",
            log=self.log,
        )

    def shutdown(self, pid: int) -> None:
        terminate([pid])
        self.pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Kafka


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_maven_jars(name: str, pom: Path, libs: Path, size: str) -> None:
    """Copy `pom`'s runtime jars from Maven Central into `libs` via mvn, once per pom version."""
    if not pom.exists():
        raise StackError(f"{name}: {pom} is missing")
    stamp = libs / ".pom.sha256"
    want = sha256_file(pom)
    if stamp.exists() and stamp.read_text().strip() == want and any(libs.glob("*.jar")):
        return
    mvn = require_binary("mvn", "maven", auto_install=False)
    say(f"{name}: fetching jars from Maven Central (first run, {size})...")
    staging = libs.parent / "libs.tmp"
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = run(cmd, what="mvn", cwd=pom.parent, timeout=900, check=False)
    jars = list(staging.glob("*.jar")) if staging.exists() else []
    if result.returncode != 0 or not jars:
        tail = "\n".join(
            "    " + line for line in result.stdout.strip().splitlines()[-LOG_TAIL_LINES:]
        )
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(
            f"{name}: mvn could not fetch the jars (exit {result.returncode}); mvn said:\n{tail}"
        )
    # Swap in the complete set at once: a half-copied libs/ would give
    # confusing ClassNotFoundErrors, and stale jars from an older pom could clash.
    (staging / ".pom.sha256").write_text(want + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    say(f"{name}: {len(jars)} jars in {libs}")


def new_cluster_id() -> str:
    """22-char URL-safe base64 of a random UUID, like `kafka-storage random-uuid`."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka's own generator avoids a leading '-': it would look like a CLI flag.
        if not cluster_id.startswith("-"):
            return cluster_id


class JvmService(LocalService):
    """A service we run as a JVM child of our own (Kafka, s3proxy): jars under libs/,
    data under data/, one log per start (the previous one kept as .prev), a pidfile."""

    def __init__(self, settings: Settings, log_name: str, pid_name: str) -> None:
        super().__init__(settings)
        self.libs = self.home / "libs"
        self.data = self.home / "data"
        self.log = self.home / log_name
        self.pidfile = self.home / pid_name
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], what: str) -> None:
        # Fresh log per start: readiness may be read from the log, so an old run's lines
        # must not count. Keep the previous run's log for debugging.
        if self.log.exists():
            self.log.replace(self.log.with_name(self.log.name + ".prev"))
        say(f"starting {what} on {HOST}:{self.port} (log: {self.log})")
        with open(self.log, "ab") as log:
            # start_new_session: the server must outlive this script and must not
            # receive the Ctrl-C meant for it.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{self._proc.pid}\n")

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None  # reaps it, so a dead child is not a zombie
        return pid_alive(self.pid())

    def wait_ready(self) -> None:
        wait_until(
            self.is_ready,
            alive=self.alive,
            timeout=self.settings.start_timeout,
            name=self.name,
            log=self.log,
        )

    def shutdown(self, pid: int) -> None:
        terminate([pid])
        self.pidfile.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- S3 (s3proxy)


def probe_http(sock: socket.socket) -> bool:
    """Any HTTP answer: an S3 endpoint refuses an unsigned request, but it answers."""
    sock.sendall(b"HEAD / HTTP/1.0\r\nHost: s3\r\n\r\n")
    return sock.recv(5) == b"HTTP/"


def s3_env_lines(endpoint: str, values: dict[str, str]) -> str:
    lines = [f"export S3_ENDPOINT={shlex.quote(endpoint)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines)


class ExternalS3(ExternalService):
    """S3_ENDPOINT names a store we do not own: print what the user set, nothing else."""

    def env_line(self) -> str:
        names = ("S3_BUCKET", "S3_REGION", "S3_ACCESS_KEY", "S3_SECRET_KEY")
        values = {name: os.environ[name] for name in names if os.environ.get(name)}
        return s3_env_lines(self.value, values)


class S3(JvmService):
    """s3proxy (a real S3 API server: SigV4, pre-signed URLs, CORS) over jclouds'
    filesystem backend. The bucket is a directory under data/, created here."""

    name = "s3"
    port_setting = "STACK_S3_PORT"
    env_var = "S3_ENDPOINT"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "s3proxy.log", "s3proxy.pid")
        self.port = settings.s3_port
        self.props = self.home / "s3proxy.properties"

    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    process_marker = "org.gaul.s3proxy.Main"

    def write_properties(self) -> None:
        properties = {
            "s3proxy.endpoint": self.url(),
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": S3_ACCESS_KEY,
            "s3proxy.credential": S3_SECRET_KEY,
            # The browser PUTs to pre-signed URLs from the web client's origin.
            "s3proxy.cors-allow-all": "true",
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(self.data),
            "jclouds.region": S3_REGION,
        }
        lines = ["# Written by scripts/stack.py on every start; edit the script, not this file."]
        lines += [f"{key}={value}" for key, value in properties.items()]
        self.props.write_text("\n".join(lines) + "\n")

    def launch(self) -> None:
        java = require_binary("java", "openjdk-17-jre-headless", auto_install=False)
        self.home.mkdir(parents=True, exist_ok=True)
        ensure_maven_jars("s3", S3_POM, self.libs, "~40 MB")
        self.write_properties()
        (self.data / S3_BUCKET).mkdir(parents=True, exist_ok=True)  # the bucket
        cmd = [
            java,
            "-Xmx256m",
            "-Djava.awt.headless=true",
            f"-Dlogback.configurationFile={S3_LOGBACK}",
            "-cp",
            f"{self.libs}/*",
            "org.gaul.s3proxy.Main",
            "--properties",
            str(self.props),
        ]
        self.spawn(cmd, "s3 (s3proxy)")

    def is_ready(self) -> bool:
        return endpoint_answers(Endpoint(HOST, self.port), probe_http)

    def env_line(self) -> str:
        values = {
            "S3_BUCKET": S3_BUCKET,
            "S3_REGION": S3_REGION,
            "S3_ACCESS_KEY": S3_ACCESS_KEY,
            "S3_SECRET_KEY": S3_SECRET_KEY,
        }
        return s3_env_lines(self.url(), values)


# --------------------------------------------------------------------------- wiring & CLI


def build_service(name: str, settings: Settings) -> Service:
    local = {
        "postgres": Postgres,
        "postgres-replica": PostgresReplica,
        "redis": Redis,
        "kafka": Kafka,
        "s3": S3,
    }[name](settings)
    if isinstance(local, PostgresReplica):
        return build_replica(local, settings)
    variable = {
        "postgres": "DATABASE_URL",
        "postgres-replica": "DATABASE_READ_URL",
        "redis": "REDIS_URL",
        "kafka": "KAFKA_BOOTSTRAP",
        "s3": "S3_ENDPOINT",
    }[name]
    # A URL naming our own local server (e.g. exported by `stack.py env`) is not external.
    if os.environ.get(variable, "").strip() in ("", local.url()):
        return local
    if name == "postgres" and os.environ.get("DATABASE_URL", "").strip():
        value = os.environ["DATABASE_URL"].strip()
        return ExternalService(
            name,
            "DATABASE_URL",
            value,
            parse_url(value, ("postgresql", "postgres"), 5432, "DATABASE_URL"),
            probe_postgres,
        )
    if name == "redis" and os.environ.get("REDIS_URL", "").strip():
        value = os.environ["REDIS_URL"].strip()
        parsed = parse_url(value, ("redis", "rediss"), 6379, "REDIS_URL")
        return ExternalService(
            name, "REDIS_URL", value, parsed, probe_redis, tls=value.lower().startswith("rediss:")
        )
    if name == "kafka" and os.environ.get("KAFKA_BOOTSTRAP", "").strip():
        value = os.environ["KAFKA_BOOTSTRAP"].strip()
        endpoints = parse_hostports(value, 9092, "KAFKA_BOOTSTRAP")
        return ExternalService(
            name, "KAFKA_BOOTSTRAP", value, ParsedUrl(endpoints, value), probe_kafka
        )
    if name == "s3" and os.environ.get("S3_ENDPOINT", "").strip():
        value = os.environ["S3_ENDPOINT"].strip()
        tls = value.lower().startswith("https:")
        parsed = parse_url(value, ("http", "https"), 443 if tls else 80, "S3_ENDPOINT")
        return ExternalS3(name, "S3_ENDPOINT", value, parsed, probe_http, tls=tls)
    return local


def build_replica(local: PostgresReplica, settings: Settings) -> Service:
    """DATABASE_READ_URL set (and not ours): that server; else our standby, unless the
    primary is external (we do not clone someone else's database)."""
    value = os.environ.get("DATABASE_READ_URL", "").strip()
    if value and value != local.url():
        return ExternalService(
            "postgres-replica",
            "DATABASE_READ_URL",
            value,
            parse_url(value, ("postgresql", "postgres"), 5432, "DATABASE_READ_URL"),
            probe_postgres,
        )
    if os.environ.get("DATABASE_URL", "").strip() not in ("", Postgres(settings).url()):
        return NoReplica()
    return local


COMMANDS = ("start", "stop", "restart", "status", "env")
USAGE = f"usage: stack.py {{{'|'.join(COMMANDS)}}} [{'|'.join(SERVICE_ORDER)} ...]"


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    if not argv:
        raise StackError(f"no command given; {USAGE}")
    if argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip(), flush=True)
        raise SystemExit(0)
    command, names = argv[0], argv[1:]
    if command not in COMMANDS:
        raise StackError(f"unknown command {command!r}; {USAGE}")
    unknown = [name for name in names if name not in SERVICE_ORDER]
    if unknown:
        raise StackError(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_ORDER)}")
    # Canonical order regardless of how they were typed (postgres, redis, kafka).
    selected = [name for name in SERVICE_ORDER if name in names] if names else list(SERVICE_ORDER)
    return command, selected


def cmd_start(services: list[Service]) -> int:
    for service in services:
        service.start()
    return 0


def cmd_stop(services: list[Service], settings: Settings, everything: bool) -> int:
    for service in reversed(services):
        service.stop()
    if everything and any(isinstance(s, LocalService) for s in services):
        # Full stop: anything else started from .stack (a crashed tool run, an old
        # layout...) goes too. Only when *all* services were asked to stop, so that
        # `stop redis` can never touch postgres or kafka.
        stack = str(settings.stack_dir)
        sweep_strays("cleanup", sorted({f"{stack}/", f"{os.path.realpath(stack)}/"}))
    return 0


def cmd_status(services: list[Service]) -> int:
    rows = [service.status() for service in services]
    width = max(len(row.state) for row in rows)
    names = max(len(row.name) for row in rows)
    for row in rows:
        pid = f"pid {row.pid}" if row.pid else "-"
        print(f"{row.name:<{names}} {row.state:<{width}}  {row.where}  {pid}", flush=True)
    return 0 if all(row.up for row in rows) else 3


def cmd_env(services: list[Service]) -> int:
    for service in services:
        print(service.env_line(), flush=True)
    return 0


class StackLock:
    """Exclusive lock on <stack>/.lock for commands that change state.

    Several developers/test runs may call `start` at once; without this two of
    them could both see "not running" and race to initdb or launch a second JVM.
    The fd is close-on-exec (Python default) and children are spawned with
    close_fds, so daemons never inherit the lock.
    """

    WAIT_SECONDS = 600.0

    def __init__(self, stack_dir: Path) -> None:
        self.path = stack_dir / ".lock"
        self.handle: TextIO | None = None

    def __enter__(self) -> StackLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        deadline = time.monotonic() + self.WAIT_SECONDS
        announced = False
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not announced:
                    say(f"waiting for another stack.py run to finish (lock {self.path})...")
                    announced = True
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"another stack.py run has held {self.path} for {self.WAIT_SECONDS:.0f} s; "
                        "check `ps aux | grep stack.py`"
                    ) from None
                time.sleep(POLL_INTERVAL)

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the flock


def main(argv: list[str]) -> int:
    command, names = parse_args(argv)
    settings = Settings.from_env()
    services = [build_service(name, settings) for name in names]
    if command in ("start", "stop", "restart"):
        with StackLock(settings.stack_dir):
            return run_command(command, names, services, settings)
    return run_command(command, names, services, settings)


def run_command(command: str, names: list[str], services: list[Service], settings: Settings) -> int:
    if command == "start":
        return cmd_start(services)
    if command == "stop":
        return cmd_stop(services, settings, everything=len(names) == len(SERVICE_ORDER))
    if command == "restart":
        cmd_stop(services, settings, everything=len(names) == len(SERVICE_ORDER))
        # Fresh objects: the stopped ones may cache state (e.g. a reaped Popen).
        return cmd_start([build_service(name, settings) for name in names])
    if command == "status":
        return cmd_status(services)
    return cmd_env(services)


def entry() -> int:
    try:
        return main(sys.argv[1:])
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("stack: error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort handler, see STACK_DEBUG
        if os.environ.get("STACK_DEBUG") == "1":
            traceback.print_exc()
        hint = (
            "" if os.environ.get("STACK_DEBUG") == "1" else " (set STACK_DEBUG=1 for a traceback)"
        )
        print(
            f"stack: error: unexpected {type(exc).__name__}: {exc}{hint}",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(entry())
