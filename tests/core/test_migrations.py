import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from core.migrate import Migration, MigrationError, load_migrations, migrate
from core.settings import Settings
from tests.support.env import base_settings, new_run_id, with_database


@pytest.fixture
async def empty_db(settings: Settings) -> AsyncIterator[str]:
    """A brand-new, empty database (the session database is already migrated)."""
    name = f"feed_mig_{new_run_id()}"
    admin = await asyncpg.connect(base_settings().database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(settings.database_url, name)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrations_apply_once_and_a_second_run_is_a_noop(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
    finally:
        await conn.close()
    assert first == [m.name for m in load_migrations()]
    assert second == []
    assert [r["name"] for r in recorded] == first
    assert {"users", "follows", "posts", "likes", "devices", "notifications", "outbox"} <= tables


async def test_concurrent_runners_apply_each_migration_once(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for conn in conns:
            await conn.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations())
    assert count == len(load_migrations())


async def test_an_edited_applied_migration_is_an_error(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn)
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    broken = [Migration(1, "0001_broken.sql", "CREATE TABLE a (id int); SELECT * FROM nope;")]
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('a')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "initial.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


async def test_schema_enforces_its_invariants(db: asyncpg.Pool) -> None:
    await db.execute(
        "INSERT INTO users (id, handle, password_hash) VALUES (1, 'Alice', 'x'), (2, 'bob', 'x')"
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO users (id, handle, password_hash) VALUES (3, 'ALICE', 'x')")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO users (id, handle, password_hash) VALUES (4, 'no spaces', 'x')"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("INSERT INTO follows (follower_id, followee_id) VALUES (1, 1)")
    await db.execute("INSERT INTO posts (id, author_id, text) VALUES (10, 1, 'Hello brave world')")
    found = await db.fetchval(
        "SELECT id FROM posts WHERE search @@ plainto_tsquery('simple', 'BRAVE')"
    )
    assert found == 10
    await db.execute("DELETE FROM users WHERE id IN (1, 2)")
