"""The local Redis server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from .config import HOST, LOG_TAIL_LINES, Settings, StackError
from .host import log_tail, pid_alive, require_binary, run, say, terminate, wait_until
from .service import LocalService


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
