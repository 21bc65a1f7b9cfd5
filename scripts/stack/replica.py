"""The local PostgreSQL streaming standby (pg_basebackup -R through a replication
slot), and the stand-in when there is none."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .config import HOST, REPLICA_SLOT, Settings, StackError
from .host import log_tail, pid_alive, run, say, wait_until
from .postgres import Postgres, pg_env
from .service import Service, Status


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
