"""A Redis of a test's own, started by the stack script itself (same configuration as the
local stack, persistence included) in a temporary STACK_DIR on a free port: a test can
stop, restart or black-hole it without the rest of the suite seeing a gap."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.env import ROOT, free_port


@dataclass
class PrivateRedis:
    stack_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _stack(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(STACK_DIR=str(self.stack_dir), STACK_REDIS_PORT=str(self.port))
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "stack.py"), command, "redis"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        self._stack("start")

    def answers(self) -> bool:
        """Whether it is up and answers PING (without a stack.py run)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self._stack("stop")

    def restart(self, down_seconds: float) -> None:
        if down_seconds <= 0:
            self._stack("restart")  # one run of the stack script, not two
            return
        self.stop()
        time.sleep(down_seconds)
        self.start()


@contextmanager
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "stack", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
