"""The whole system as real processes (server, gateway, fan-out, push) on free ports, for
end-to-end and browser tests; and Debian's Chromium driven by Playwright.

Processes log to files (a pipe nobody reads would block them once full); a failing test
prints their tails."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Browser, async_playwright

from core.settings import Settings
from scripts.supervise import procs
from tests.support.env import ROOT, free_port, settings_env
from tests.support.procs import get, on_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
READY_TIMEOUT = 30.0
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


def publish_screenshot(path: Path, name: str) -> None:
    """Copy a screenshot to docs/screenshots/ (linked from the README) when asked with
    UPDATE_SCREENSHOTS=1; otherwise it stays under artifacts/ and the tree stays clean."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOTS / name)


def _ready(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    except OSError:
        return False


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(f"[{self.name}] {line}" for line in text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """`sig` (SIGKILL: a crash), then what procs.stop does: SIGTERM, then SIGKILL
        after `timeout`."""
        if sig != signal.SIGTERM and self.proc.poll() is None:
            self.proc.send_signal(sig)
        procs.stop([self.proc], timeout)


@dataclass
class System:
    settings: Settings
    logs: Path
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.services["server"].url

    @property
    def gateway_url(self) -> str:
        return self.services["gateway"].url

    def start(self, name: str, port: int | None = None, **env: str) -> Service:
        """Start (or restart, on the same port) one service and wait for /readyz."""
        port = port or free_port()
        settings = on_port(self.settings, name, port)
        child_env = settings_env(settings) | env
        log = self.logs / f"{name}-{port}.log"
        proc = procs.start([sys.executable, "-m", name], log, cwd=ROOT, env=child_env)
        service = Service(name, port, proc, log, child_env)
        self.services[name] = service
        try:
            procs.wait_ready(
                name, lambda: _ready(port), [proc], timeout=READY_TIMEOUT, interval=0.05
            )
        except procs.ProcError as exc:
            service.stop(signal.SIGKILL)
            raise AssertionError(f"{name} did not become ready:\n{service.log_tail()}") from exc
        return service

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    def log_tails(self) -> str:
        return "\n".join(s.log_tail() for s in self.services.values())


@asynccontextmanager
async def running_system(
    settings: Settings, services: Iterable[str] = ("server", "gateway", "fanout"), **env: str
) -> AsyncIterator[System]:
    """Start `services` in dependency order: the gateway is pointed at the server, fan-out
    gets its own consumer group starting at the newest events (other tests' old events
    are not its business)."""
    live = dataclasses.replace(
        settings,
        fanout_group=f"fanout-{uuid.uuid4().hex[:8]}",
        fanout_offset_reset="latest",
        gateway_connects_per_ip=1000,
    )
    with tempfile.TemporaryDirectory(prefix="feed-system-") as logs:
        system = System(live, Path(logs))
        try:
            wanted = list(services)
            if "server" in wanted:
                server = system.start("server", None, **env)
                system.settings = dataclasses.replace(system.settings, gateway_api_url=server.url)
            for name in wanted:
                if name != "server":
                    system.start(name, None, **env)
            yield system
        except BaseException:
            sys.stderr.write(system.log_tails() + "\n")
            raise
        finally:
            system.stop_all()


def _chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"Chromium not found at {CHROMIUM}: run scripts/setup.sh")
    return CHROMIUM


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium (never a downloaded browser), headless."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=_chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            await browser.close()
