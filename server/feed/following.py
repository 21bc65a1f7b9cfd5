"""Whom a user follows, cached in Redis (keys.following) so the feed read path needs no
Postgres: it drops timeline entries of authors no longer followed, and picks the
celebrity-tier authors to merge, with set lookups inside its Redis scripts.

Postgres stays the truth. The cache is filled on demand and dropped by every follow or
unfollow, after its transaction commits. A fill races with a change: it reads Postgres,
the change commits and drops the key, then the fill stores what it read, now stale. So
every change also writes a fresh random token (keys.following_version), and a fill stores
its set only if the token it saw before reading Postgres is still there: any change
committed after the fill's read replaced the token. If the drop itself fails (Redis
unreachable just then), the stale set lives at most FOLLOWING_TTL; unfollowed authors'
posts are meanwhile purged from the timeline by fan-out anyway.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import asyncpg

from core import keys
from core.clients import AnyRedis
from core.expiry import spread
from core.lua_files import read_lua
from server.feed.hydrate import REDIS_ERRORS

log = logging.getLogger(__name__)

FOLLOWING_TTL = 3600  # seconds a filled set lives at most, less a random share (bounds staleness)
VERSION_TTL = 24 * 3600  # a fill takes milliseconds; the token only has to outlive it
EMPTY_MEMBER = "0"

LUA_DIR = Path(__file__).with_name("lua")
FILL = read_lua(LUA_DIR, "following_fill")
INVALIDATE = read_lua(LUA_DIR, "following_invalidate")

FOLLOWEES_SQL = "SELECT followee_id FROM follows WHERE follower_id = $1"


class FollowingCache:
    def __init__(self, db: asyncpg.Pool, redis_client: AnyRedis) -> None:
        self._db = db
        self._redis = redis_client
        self._fill = redis_client.register_script(FILL)
        self._invalidate = redis_client.register_script(INVALIDATE)

    async def fill(self, user_id: int) -> set[int]:
        """Whom the user follows, from Postgres, stored in Redis unless a follow or
        unfollow happened meanwhile (the next read fills it then)."""
        names = [keys.following(user_id), keys.following_version(user_id)]
        token = await self._redis.get(names[1])
        rows = await self._db.fetch(FOLLOWEES_SQL, user_id)
        followees = {r["followee_id"] for r in rows}
        members = [EMPTY_MEMBER, *map(str, followees)]
        seen = token.decode() if isinstance(token, bytes) else (token or "")
        await self._fill(keys=names, args=[seen, spread(FOLLOWING_TTL), *members])
        return followees

    async def changed(self, user_id: int) -> None:
        """After a follow or unfollow of `user_id` committed."""
        names = [keys.following(user_id), keys.following_version(user_id)]
        try:
            await self._invalidate(keys=names, args=[secrets.token_hex(8), VERSION_TTL])
        except REDIS_ERRORS as exc:
            log.warning("following cache of %d not dropped (Redis unavailable): %s", user_id, exc)
