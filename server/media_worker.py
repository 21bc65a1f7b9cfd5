"""The media worker: finds uploads in the object store and processes them, off the
request path. It owns the `processing` -> `ready` / `failed` transition of media rows.

Why it polls: the contract has no "upload finished" call, and S3-compatible stores have
no portable upload notification (s3proxy and R2 have none AWS-style). So a row is due at
`next_check_at`; the worker HEADs its upload key, backing off while nothing is there,
and fails the row once the pre-signed URL has expired with nothing uploaded. Rows are
claimed with FOR UPDATE SKIP LOCKED, so several API server processes share the work.
Decoding runs in a thread: the event loop keeps serving requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from core.object_store import ObjectStore, ObjectStoreError, ObjectTooLarge
from core.settings import Settings
from server.context import Conn
from server.media_processing import MediaRefused, ProcessedImage, process

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
MAX_GRACE_SECONDS = 60.0  # a PUT that began just before expiry may still be arriving
BATCH = 8
SWEEP_SECONDS = 60.0
SWEEP_BATCH = 100


def backoff(checks: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(checks, 8)))


class MediaWorker:
    def __init__(self, settings: Settings, db: asyncpg.Pool, store: ObjectStore) -> None:
        self._settings = settings
        self._db = db
        self._store = store
        self._grace = timedelta(seconds=min(MAX_GRACE_SECONDS, settings.media_upload_ttl_seconds))

    async def run(self) -> None:
        """Until cancelled: handle what is due, then sleep a little when nothing was;
        every SWEEP_SECONDS, delete what is to be purged."""
        next_sweep = 0.0
        while True:
            try:
                handled = await self.run_once()
                if time.monotonic() >= next_sweep:
                    await self.sweep_once()
                    next_sweep = time.monotonic() + SWEEP_SECONDS
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("media worker: Postgres unavailable: %s", exc)
                handled = 0
            if handled < BATCH:
                await asyncio.sleep(POLL_SECONDS)

    async def sweep_once(self) -> int:
        """Deletes media whose `purge_after` has passed (never attached within 24 h, or
        their post was deleted): objects first, then the row, so a failure leaves the row
        to try again. Deleting an object twice is harmless, so workers need no lock."""
        purged = 0
        for _ in range(SWEEP_BATCH):
            # Row locked while its objects go: a post attaching it waits, then finds it
            # gone (and create_post refuses media past `purge_after` anyway).
            async with self._db.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT id, upload_key, image_key, preview_key FROM media "
                    "WHERE purge_after IS NOT NULL AND purge_after <= now() "
                    "ORDER BY purge_after LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                if row is None:
                    break
                keys = [row["upload_key"], row["image_key"], row["preview_key"]]
                try:
                    for key in filter(None, keys):
                        await self._store.delete(key)
                except ObjectStoreError as exc:
                    log.warning("media %s: not purged yet: %s", row["id"], exc)
                    break
                await conn.execute("DELETE FROM media WHERE id = $1", row["id"])
            purged += 1
        if purged:
            log.info("media purged: %d", purged)
        return purged

    async def run_once(self) -> int:
        """Handles up to BATCH due rows, one transaction each; returns how many."""
        handled = 0
        for _ in range(BATCH):
            async with self._db.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT id, owner_id, content_type, size, upload_key, upload_expires_at, "
                    "checks FROM media WHERE status = 'processing' AND next_check_at <= now() "
                    "ORDER BY next_check_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                if row is None:
                    return handled
                await self._handle(conn, row)
            handled += 1
        return handled

    async def _handle(self, conn: Conn, row: asyncpg.Record) -> None:
        began = time.monotonic()
        try:
            outcome = await self._process(conn, row)
        except ObjectStoreError as exc:
            if not exc.retriable:
                await self._fail(conn, row, f"upload_unreadable: {exc}")
                return
            log.warning("media %s: object store unavailable, will retry: %s", row["id"], exc)
            outcome = "retry"
            await self._later(conn, row)
        if outcome != "waiting":
            log.info(
                "media %s %s in %.0f ms", row["id"], outcome, (time.monotonic() - began) * 1000
            )

    async def _process(self, conn: Conn, row: asyncpg.Record) -> str:
        info = await self._store.head(row["upload_key"])
        if info is None:
            if datetime.now(UTC) > row["upload_expires_at"] + self._grace:
                await self._fail(
                    conn, row, "upload_missing: nothing was uploaded before the upload URL expired"
                )
                return "failed"
            await self._later(conn, row)
            return "waiting"
        # The signature binds both already; checked again so a store that does not
        # enforce signed headers cannot let another size or type through.
        if info.size != row["size"] or info.content_type.lower() != row["content_type"]:
            await self._fail(
                conn,
                row,
                f"upload_mismatch: the upload is {info.size} bytes of {info.content_type!r}, "
                f"not {row['size']} bytes of {row['content_type']!r} as declared",
            )
            return "failed"
        try:
            data = await self._store.get(row["upload_key"], self._settings.media_max_bytes)
        except ObjectTooLarge as exc:
            await self._fail(conn, row, f"too_large: {exc}")
            return "failed"
        try:
            result = await asyncio.to_thread(
                process, data, row["content_type"], self._settings.media_max_pixels
            )
        except MediaRefused as exc:
            await self._fail(conn, row, exc.reason)
            return "failed"
        await self._store_ready(conn, row, result)
        return "ready"

    async def _store_ready(self, conn: Conn, row: asyncpg.Record, result: ProcessedImage) -> None:
        base = f"media/{row['owner_id']}/{row['id']}"
        image_key = f"{base}/image.{result.image.extension}"
        preview_key = f"{base}/preview.{result.preview.extension}"
        await self._store.put(image_key, result.image.data, result.image.content_type, public=True)
        await self._store.put(
            preview_key, result.preview.data, result.preview.content_type, public=True
        )
        await conn.execute(
            "UPDATE media SET status = 'ready', image_key = $2, preview_key = $3, width = $4, "
            "height = $5, blurhash = $6, processed_at = now() WHERE id = $1",
            row["id"],
            image_key,
            preview_key,
            result.width,
            result.height,
            result.blurhash,
        )
        # The upload still has whatever metadata it came with: it must not stay.
        await self._store.delete(row["upload_key"])

    async def _fail(self, conn: Conn, row: asyncpg.Record, reason: str) -> None:
        await conn.execute(
            "UPDATE media SET status = 'failed', reason = $2, processed_at = now() WHERE id = $1",
            row["id"],
            reason[:500],
        )
        try:
            await self._store.delete(row["upload_key"])
        except ObjectStoreError as exc:  # the row says failed; the bytes are never served
            log.warning("media %s: upload not deleted: %s", row["id"], exc)

    async def _later(self, conn: Conn, row: asyncpg.Record) -> None:
        await conn.execute(
            "UPDATE media SET checks = checks + 1, "
            "next_check_at = now() + make_interval(secs => $2) WHERE id = $1",
            row["id"],
            backoff(row["checks"]),
        )
