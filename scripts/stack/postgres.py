"""The local PostgreSQL primary: initdb, configuration, start, stop, the feed database."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .config import HOST, PROJECT_DIR, REPLICATION_HBA, STOP_GRACE_SECONDS, Settings, StackError
from .host import (
    apt_install,
    guarded_pid,
    is_root,
    log_tail,
    pid_alive,
    run,
    say,
    terminate,
    wait_until,
)
from .service import LocalService


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
