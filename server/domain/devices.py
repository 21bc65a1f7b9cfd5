"""Push devices in Postgres: registering (at most MAX_DEVICES enabled per user, a token
moving to its new owner), listing and deleting one's own."""

from __future__ import annotations

import asyncpg

from server.context import ServerContext
from server.http.errors import ApiError

MAX_DEVICES = 20  # per user: phones, tablets and browsers; more is a client bug
DEVICE_COLUMNS = "id, kind, token, enabled, disabled_reason, created_at"


async def register(
    c: ServerContext, me: int, kind: str, token: str, p256dh: str | None, auth: str | None
) -> asyncpg.Record:
    async with c.db.acquire() as conn, conn.transaction():
        # Serialise one user's registrations so the cap cannot be raced past.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('devices:' || $1::bigint::text, 0))", me
        )
        others = await conn.fetchval(
            "SELECT count(*) FROM devices WHERE user_id = $1 AND enabled"
            " AND NOT (kind = $2 AND token = $3)",
            me,
            kind,
            token,
        )
        if others >= MAX_DEVICES:
            raise ApiError(
                409, "too_many_devices", f"at most {MAX_DEVICES} devices; delete one first"
            )
        # A token registered again moves to its new owner (a phone changed hands, a
        # browser profile signed in as someone else) and is enabled again.
        row = await conn.fetchrow(
            "INSERT INTO devices (id, user_id, kind, token, p256dh, auth)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (kind, token) DO UPDATE SET user_id = EXCLUDED.user_id,"
            "  p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, enabled = true,"
            "  disabled_reason = NULL, disabled_at = NULL, updated_at = now()"
            f" RETURNING {DEVICE_COLUMNS}",
            c.ids.next_id(),
            me,
            kind,
            token,
            p256dh,
            auth,
        )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
    return row


async def mine(c: ServerContext, me: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await c.db.fetch(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        me,
        MAX_DEVICES * 5,
    )
    return rows


async def delete(c: ServerContext, me: int, device: int) -> None:
    deleted = await c.db.fetchval(
        "DELETE FROM devices WHERE id = $1 AND user_id = $2 RETURNING id", device, me
    )
    if deleted is None:  # someone else's device looks exactly like a missing one
        raise ApiError(404, "device_not_found", "no such device")
