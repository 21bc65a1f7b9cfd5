"""Processes and ports on this machine: pid files, /proc lookups, listening sockets,
reserved ports, stray processes, running commands and waiting. It stops only
processes it can tie to the stack's own directory or pid files."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .config import HOST, LOG_TAIL_LINES, POLL_INTERVAL, STOP_GRACE_SECONDS, StackError


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
