"""Prepares shared infrastructure before services start: schema migrations, Kafka topics
and the object store's media bucket.

python -m core.bootstrap     # idempotent; run by `make run` and `make test`
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from core.clients import DependencyUnavailable, create_admin, ensure_topics
from core.migrate import MigrationError, migrate
from core.object_store import ObjectStore, ObjectStoreError
from core.settings import Settings, SettingsError, mask_url
from core.topics import Topics


async def _bootstrap(settings: Settings) -> None:
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DependencyUnavailable(
            f"cannot reach PostgreSQL at {mask_url(settings.database_url)}: {exc}"
        ) from None
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print(
        f"bootstrap: migrations applied: {', '.join(applied)}"
        if applied
        else "bootstrap: schema is up to date",
        flush=True,
    )
    admin = await create_admin(settings)
    try:
        created = await ensure_topics(
            admin,
            Topics.for_settings(settings).all(),
            settings.kafka_partitions,
            settings.kafka_replication_factor,
            settings.kafka_min_insync_replicas,
        )
    finally:
        await admin.close()
    print(
        f"bootstrap: topics created: {', '.join(created)}"
        if created
        else "bootstrap: Kafka topics exist",
        flush=True,
    )
    try:
        async with ObjectStore.open(settings) as store:
            made = await store.ensure_bucket()
    except ObjectStoreError as exc:
        raise DependencyUnavailable(
            f"object store at {settings.s3_endpoint}, bucket {settings.s3_bucket}: {exc}"
        ) from None
    print(
        f"bootstrap: bucket {settings.s3_bucket} {'created' if made else 'exists'}",
        flush=True,
    )


def main() -> None:
    try:
        settings = Settings.from_env()
        asyncio.run(_bootstrap(settings))
    except (SettingsError, DependencyUnavailable, MigrationError) as exc:
        sys.exit(f"bootstrap: error: {exc}")


if __name__ == "__main__":
    main()
