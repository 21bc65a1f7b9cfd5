"""Start our services as real processes on free ports, the way `make run` does, and wait
for them with the process runner of scripts/ (scripts/supervise/procs.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from core.settings import Settings
from scripts.supervise import procs
from tests.support.env import ROOT, free_port, settings_env

PORT_FIELD = {
    "server": "server_port",
    "gateway": "gateway_port",
    "fanout": "fanout_port",
    "push": "push_port",
}


def on_port(settings: Settings, name: str, port: int) -> Settings:
    """`settings` with service `name` (a PORT_FIELD key) listening on `port`."""
    port_field: dict[str, Any] = {PORT_FIELD[name]: port}
    return dataclasses.replace(settings, **port_field)


def start_service(
    name: str, settings: Settings, **env_overrides: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    settings = on_port(settings, name, port)
    env = settings_env(settings)
    env.update(env_overrides)
    proc = subprocess.Popen(
        [sys.executable, "-m", name],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc, port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen[str], port: int, timeout: float = 30.0) -> bytes:
    """/readyz's body once it answers 200; fails with the process's output when it exits
    first or is not ready in `timeout` seconds (then it is killed)."""
    answer = [b""]

    def ready() -> bool:
        try:
            status, answer[0] = get(f"http://127.0.0.1:{port}/readyz")
        except (urllib.error.URLError, OSError):
            return False
        return status == 200

    def output() -> str:
        if proc.poll() is None:
            proc.kill()
        return proc.communicate()[0]

    try:
        procs.wait_ready("service", ready, [proc], timeout=timeout, interval=0.05, log_tail=output)
    except procs.ProcError as exc:
        raise AssertionError(str(exc)) from None
    return answer[0]
