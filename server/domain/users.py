"""Users and follows in Postgres: profiles by handle, profile timelines (from the read
replica), following and unfollowing (both counters, the outbox events), follower lists."""

from __future__ import annotations

import asyncpg

from core import events, topics
from server.context import ServerContext
from server.http import validation as v
from server.http.errors import ApiError, not_found

# The two directions of the follows table, for follower and following lists.
FOLLOWERS = ("followee_id", "follower_id")
FOLLOWING = ("follower_id", "followee_id")


async def create(c: ServerContext, handle: str, display_name: str, password_hash: str) -> int:
    """A new user's id; 409 handle_taken when the handle is (case-insensitively) in use."""
    new_id = c.ids.next_id()
    try:
        await c.db.execute(
            "INSERT INTO users (id, handle, display_name, password_hash) VALUES ($1, $2, $3, $4)",
            new_id,
            handle,
            display_name,
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise ApiError(
            409, "handle_taken", "that handle is already taken", field="handle"
        ) from None
    return new_id


async def credentials(db: asyncpg.Pool, handle: str) -> asyncpg.Record | None:
    """(id, password_hash) of the user with this handle, if any."""
    if not v.HANDLE.fullmatch(handle):
        return None
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT id, password_hash FROM users WHERE lower(handle) = lower($1)", handle
    )
    return row


# The self-join reads the row as it was before this UPDATE (its snapshot).
RETURNING_USER = """
UPDATE users u SET last_active_at = now() FROM users old
 WHERE u.id = $1 AND old.id = $1
RETURNING old.last_active_at < now() - make_interval(days => $2)
"""


async def mark_active(db: asyncpg.Pool, user: int, inactive_days: int) -> bool:
    """Note the user active now; whether they had been inactive longer than the days."""
    return bool(await db.fetchval(RETURNING_USER, user, inactive_days))


async def by_handle(db: asyncpg.Pool, handle: str) -> asyncpg.Record:
    row = None
    if v.HANDLE.fullmatch(handle):
        row = await db.fetchrow(
            "SELECT id, handle, display_name, created_at, follower_count, following_count, "
            "post_count FROM users WHERE lower(handle) = lower($1)",
            handle,
        )
    if row is None:
        raise not_found("user")
    return row


async def follows(db: asyncpg.Pool, follower: int, followee: int) -> bool:
    found = await db.fetchval(
        "SELECT true FROM follows WHERE follower_id = $1 AND followee_id = $2", follower, followee
    )
    return bool(found)


async def post_ids(c: ServerContext, author: int, before: int, count: int) -> list[int]:
    """Up to `count` ids of an author's live posts older than `before`, newest first."""
    rows = await c.reads.fetch(
        "SELECT id FROM posts WHERE author_id = $1 AND deleted_at IS NULL AND id < $2 "
        "ORDER BY id DESC LIMIT $3",
        author,
        before,
        count,
    )
    return [r["id"] for r in rows]


async def set_follow(c: ServerContext, me: int, target: int, following: bool) -> tuple[bool, int]:
    """(whether anything changed, the target's follower count after it)."""
    if target == me:
        raise ApiError(422, "self_follow", "you cannot follow yourself", field="user_id")
    async with c.db.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT true FROM users WHERE id = $1", target):
            raise not_found("user")
        if following:
            changed = await conn.fetchval(
                "INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                me,
                target,
            )
        else:
            changed = await conn.fetchval(
                "DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2 RETURNING true",
                me,
                target,
            )
        if changed:
            delta = 1 if following else -1
            # Both users' rows in id order: two people following each other at the same
            # moment would otherwise each lock their own row first and deadlock.
            counts = {
                me: "UPDATE users SET following_count = following_count + $2 WHERE id = $1",
                target: "UPDATE users SET follower_count = follower_count + $2 WHERE id = $1",
            }
            for user in sorted(counts):
                await conn.execute(counts[user], user, delta)
            event: events.Event = (
                events.FollowCreated(follower_id=me, followee_id=target)
                if following
                else events.FollowRemoved(follower_id=me, followee_id=target)
            )
            await c.outbox.enqueue(conn, topics.FOLLOWS, me, event)
            if following:
                await c.outbox.enqueue(
                    conn,
                    topics.ENGAGEMENTS,
                    target,
                    events.Engagement(kind="follow", actor_id=me, recipient_id=target),
                )
        count: int = await conn.fetchval("SELECT follower_count FROM users WHERE id = $1", target)
    return bool(changed), count


async def people(
    db: asyncpg.Pool, user: int, direction: tuple[str, str], before: int, count: int
) -> list[asyncpg.Record]:
    """Keyset pages over the follows indexes, newest accounts first (ids are time-ordered),
    so a page never shifts when people follow or unfollow meanwhile. `direction`:
    FOLLOWERS or FOLLOWING (column names, never input)."""
    by, other = direction
    rows: list[asyncpg.Record] = await db.fetch(
        f"SELECT u.id, u.handle, u.display_name, f.created_at "
        f"  FROM follows f JOIN users u ON u.id = f.{other} "
        f" WHERE f.{by} = $1 AND f.{other} < $2 ORDER BY f.{other} DESC LIMIT $3",
        user,
        before,
        count,
    )
    return rows
