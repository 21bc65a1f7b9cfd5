"""Posts in Postgres: publishing (rate limit, idempotency, replies, reposts, mentions,
media, the outbox event in the same transaction), deleting, likes, replies."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import orjson

from core import events, topics
from core.ids import id_timestamp_ms, min_id_for_ms
from core.postview import iso
from server.context import Conn, ServerContext
from server.contract.posts import NewPost
from server.http.errors import ApiError, invalid, not_found
from server.outbox import Outbox

RATE_LIMIT_POSTS = 300
RATE_LIMIT_WINDOW_MS = 3 * 3600 * 1000
MAX_MENTIONS = 10
MENTION = re.compile(r"(?<![A-Za-z0-9_])@([A-Za-z0-9_]{1,15})\b")
IDEMPOTENCY_TTL = "24 hours"


@dataclass(frozen=True, slots=True)
class Published:
    response: bytes  # the 201 body (stored with an idempotency key, replayed as is)
    post_id: int | None  # None: a replay of an earlier request (nothing new was written)


@dataclass(frozen=True, slots=True)
class Removed:
    reply_to: int | None
    repost_of: int | None


async def publish(c: ServerContext, author: int, new: NewPost, key: str | None) -> Published:
    """One transaction: the post, its counters, its engagements and its outbox event."""
    text, reply_to, repost_of = new.text, new.reply_to, new.repost_of
    media_ids = new.media_ids or []
    async with c.db.acquire() as conn, conn.transaction():
        # One author's posts are serialised: the idempotency check and the rate limit are
        # exact even for concurrent retries of the same request.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", author)
        if key is not None:
            stored = await conn.fetchval(
                "SELECT response FROM idempotency_keys WHERE user_id = $1 AND key = $2 "
                f"AND created_at > now() - interval '{IDEMPOTENCY_TTL}'",
                author,
                key,
            )
            if stored is not None:
                return Published(stored, None)
        await _check_rate(conn, author)
        parent_author = await _live_author(conn, reply_to, "reply_to")
        original_author = await _live_author(conn, repost_of, "repost_of")
        await _check_media(conn, author, media_ids)
        post_id = c.ids.next_id()
        created = await conn.fetchval(
            "INSERT INTO posts (id, author_id, text, reply_to, repost_of, media_ids) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
            post_id,
            author,
            text,
            reply_to,
            repost_of,
            media_ids,
        )
        await conn.execute("UPDATE users SET post_count = post_count + 1 WHERE id = $1", author)
        if media_ids:
            await conn.execute(
                "UPDATE media SET post_id = $1, purge_after = NULL WHERE id = ANY($2::bigint[])",
                post_id,
                media_ids,
            )
        await _record_engagements(
            conn, c, post_id, author, text, reply_to, parent_author, repost_of, original_author
        )
        await c.outbox.enqueue(
            conn,
            topics.POSTS,
            author,
            events.PostCreated(
                post_id=post_id,
                author_id=author,
                created_at_ms=id_timestamp_ms(post_id),
                reply_to=reply_to,
                repost_of=repost_of,
            ),
        )
        response = orjson.dumps(
            {
                "post_id": str(post_id),
                "created_at": iso(created),
                "author_id": str(author),
                "fan_out_status": "queued",
            }
        )
        if key is not None:
            await conn.execute(
                "INSERT INTO idempotency_keys (user_id, key, response) VALUES ($1, $2, $3) "
                "ON CONFLICT (user_id, key) DO UPDATE SET response = $3, created_at = now()",
                author,
                key,
                response,
            )
    return Published(response, post_id)


async def _check_rate(conn: Conn, author: int) -> None:
    now_ms = int(time.time() * 1000)
    since = min_id_for_ms(now_ms - RATE_LIMIT_WINDOW_MS)
    rows = await conn.fetch(
        "SELECT id FROM posts WHERE author_id = $1 AND id >= $2 ORDER BY id DESC LIMIT $3",
        author,
        since,
        RATE_LIMIT_POSTS,
    )
    if len(rows) >= RATE_LIMIT_POSTS:
        oldest_ms = id_timestamp_ms(rows[-1]["id"])
        retry = max(1, math.ceil((oldest_ms + RATE_LIMIT_WINDOW_MS - now_ms) / 1000))
        raise ApiError(
            429,
            "rate_limited",
            f"at most {RATE_LIMIT_POSTS} posts per 3 hours; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


async def _check_media(conn: Conn, author: int, media_ids: list[int]) -> None:
    """Each media id is the author's own, processed (ready) and on no other post. Locked
    (FOR UPDATE) so two posts cannot take the same image at once."""
    if not media_ids:
        return
    if len(set(media_ids)) != len(media_ids):
        raise invalid("media_ids", "media_ids lists the same media twice", "duplicate_media")
    rows = await conn.fetch(
        "SELECT id, owner_id, status, post_id FROM media WHERE id = ANY($1::bigint[]) "
        "AND (purge_after IS NULL OR purge_after > now()) FOR UPDATE",
        media_ids,
    )
    found = {row["id"]: row for row in rows}
    for media_id in media_ids:
        row = found.get(media_id)
        if row is None or row["owner_id"] != author:
            raise invalid("media_ids", f"media {media_id} is not one of yours", "media_not_found")
        if row["status"] == "processing":
            raise invalid("media_ids", f"media {media_id} is still processing", "media_not_ready")
        if row["status"] == "failed":
            raise invalid("media_ids", f"media {media_id} failed processing", "media_failed")
        if row["post_id"] is not None:
            raise invalid(
                "media_ids", f"media {media_id} is attached to another post", "media_attached"
            )


async def _live_author(conn: Conn, post_id: int | None, field: str) -> int | None:
    if post_id is None:
        return None
    author: int | None = await conn.fetchval(
        "SELECT author_id FROM posts WHERE id = $1 AND deleted_at IS NULL", post_id
    )
    if author is None:
        raise invalid(field, f"{field} refers to a post that does not exist", "post_not_found")
    return author


async def _record_engagements(
    conn: Conn,
    c: ServerContext,
    post_id: int,
    author: int,
    text: str,
    reply_to: int | None,
    parent_author: int | None,
    repost_of: int | None,
    original_author: int | None,
) -> None:
    """Counters of the parent, and engagement events for the people concerned."""
    notified: set[int] = {author}
    if reply_to is not None and parent_author is not None:
        await conn.execute("UPDATE posts SET reply_count = reply_count + 1 WHERE id = $1", reply_to)
        await _engage(conn, c.outbox, "reply", author, parent_author, post_id, notified)
    if repost_of is not None and original_author is not None:
        await conn.execute(
            "UPDATE posts SET repost_count = repost_count + 1 WHERE id = $1", repost_of
        )
        await _engage(conn, c.outbox, "repost", author, original_author, repost_of, notified)
    handles = list(dict.fromkeys(m.lower() for m in MENTION.findall(text)))[:MAX_MENTIONS]
    if handles:
        rows = await conn.fetch("SELECT id FROM users WHERE lower(handle) = ANY($1)", handles)
        for row in rows:
            await _engage(conn, c.outbox, "mention", author, row["id"], post_id, notified)


async def _engage(
    conn: Conn,
    outbox: Outbox,
    kind: events.EngagementKind,
    actor: int,
    recipient: int,
    post_id: int | None,
    notified: set[int],
) -> None:
    if recipient in notified:
        return
    notified.add(recipient)
    await outbox.enqueue(
        conn,
        topics.ENGAGEMENTS,
        recipient,
        events.Engagement(kind=kind, actor_id=actor, recipient_id=recipient, post_id=post_id),
    )


async def remove(c: ServerContext, post_id: int, me: int) -> Removed:
    """Soft-delete an own post (its counters, its media's purge, the outbox event)."""
    async with c.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT author_id, reply_to, repost_of FROM posts "
            "WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
            post_id,
        )
        if row is None:
            raise not_found("post")
        if row["author_id"] != me:
            raise ApiError(403, "not_author", "only the author can delete a post")
        await conn.execute("UPDATE posts SET deleted_at = now() WHERE id = $1", post_id)
        # Its images go too: the media worker deletes them from the object store.
        await conn.execute("UPDATE media SET purge_after = now() WHERE post_id = $1", post_id)
        await conn.execute("UPDATE users SET post_count = post_count - 1 WHERE id = $1", me)
        if row["reply_to"] is not None:
            await conn.execute(
                "UPDATE posts SET reply_count = reply_count - 1 WHERE id = $1", row["reply_to"]
            )
        if row["repost_of"] is not None:
            await conn.execute(
                "UPDATE posts SET repost_count = repost_count - 1 WHERE id = $1", row["repost_of"]
            )
        await c.outbox.enqueue(
            conn, topics.POSTS, me, events.PostDeleted(post_id=post_id, author_id=me)
        )
    return Removed(row["reply_to"], row["repost_of"])


async def set_like(c: ServerContext, post_id: int, me: int, liked: bool) -> tuple[int, int]:
    """(change of the like count: -1, 0 or 1; the count after it)."""
    async with c.db.acquire() as conn, conn.transaction():
        author = await conn.fetchval(
            "SELECT author_id FROM posts WHERE id = $1 AND deleted_at IS NULL", post_id
        )
        if author is None:
            raise not_found("post")
        if liked:
            changed = await conn.fetchval(
                "INSERT INTO likes (post_id, user_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                post_id,
                me,
            )
        else:
            changed = await conn.fetchval(
                "DELETE FROM likes WHERE post_id = $1 AND user_id = $2 RETURNING true", post_id, me
            )
        delta = (1 if liked else -1) if changed else 0
        count: int = await conn.fetchval(
            "UPDATE posts SET like_count = like_count + $2 WHERE id = $1 RETURNING like_count",
            post_id,
            delta,
        )
        if changed and liked and author != me:
            await c.outbox.enqueue(
                conn,
                topics.ENGAGEMENTS,
                author,
                events.Engagement(kind="like", actor_id=me, recipient_id=author, post_id=post_id),
            )
    return delta, count


async def reply_ids(c: ServerContext, post_id: int, after: int, count: int) -> list[int]:
    """Up to `count` ids of a live post's live replies after `after`, oldest first."""
    if not await c.db.fetchval(
        "SELECT true FROM posts WHERE id = $1 AND deleted_at IS NULL", post_id
    ):
        raise not_found("post")
    rows = await c.db.fetch(
        "SELECT id FROM posts WHERE reply_to = $1 AND deleted_at IS NULL AND id > $2 "
        "ORDER BY id LIMIT $3",
        post_id,
        after,
        count,
    )
    return [r["id"] for r in rows]
