"""Is one service process ready: its readiness URL answers 200 and, where Linux's /proc
shows it, that very process holds a listening socket on the port. Processes that share
a port (SO_REUSEPORT gateways) answer the URL for each other; the socket tells them apart.
Blocking calls: run them in a thread."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
PROBE_TIMEOUT = 2.0


def answers_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found  # gone, or not ours
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` listens on TCP `port`; True where there is no /proc to ask."""
    if not Path("/proc/self/net/tcp").exists():
        return True
    inodes = socket_inodes(pid)
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
            # timeout inode ...
            fields = row.split()
            if (
                len(fields) > 9
                and fields[3] == LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
                and fields[9] in inodes
            ):
                return True
    return False


def is_ready(pid: int, port: int, url: str) -> bool:
    return listens(pid, port) and answers_ready(url)
