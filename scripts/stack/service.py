"""The service interface the CLI drives (start, stop, status, env line), an external
service that is only checked, and a local one run from .stack/."""

from __future__ import annotations

import os
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import EXTERNAL_WAIT_SECONDS, HOST, POLL_INTERVAL, Settings, StackError
from .endpoints import ParsedUrl, endpoint_answers, mask_url
from .host import (
    guarded_pid,
    pid_alive,
    pid_listen_ports,
    port_answers,
    port_in_use_error,
    reserve_ports,
    say,
    sweep_strays,
)


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
