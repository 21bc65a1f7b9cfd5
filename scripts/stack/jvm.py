"""What the Java services share: jars from Maven Central and one JVM process."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from .config import (
    HOST,
    LOG_TAIL_LINES,
    Settings,
    StackError,
)
from .host import pid_alive, require_binary, run, say, terminate, wait_until
from .service import LocalService


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
