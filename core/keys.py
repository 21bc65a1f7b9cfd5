"""Every Redis key and pub/sub channel name. Nothing else spells a key by hand.

Per-user keys put the user id in a hash tag ({...}) so that, on Redis Cluster, all of one
user's keys live in one slot and a script touching them stays single-slot.
"""

from __future__ import annotations

from binascii import crc_hqx

CLUSTER_SLOTS = 16_384

# Home timeline of a user: ZSET capped at TIMELINE_CAP entries (DESIGN.md).
# A Redis score is a double, which cannot hold a 64-bit id exactly. Members are the
# post id as a fixed-width 19-digit decimal string and every score is 0: with equal
# scores a ZSET orders members lexicographically, which for fixed-width digits is
# exactly numeric order, and re-adding the same post is a no-op (idempotent replays).
TIMELINE_ID_WIDTH = 19


def user_slot(user_id: int) -> int:
    """The Redis Cluster hash slot of every per-user key: CRC16 (XMODEM, which is
    binascii's crc_hqx from 0) of the hash tag's content, the decimal id. Same as
    redis.crc.key_slot(timeline(user_id)), without building and parsing the key."""
    return crc_hqx(b"%d" % user_id, 0) % CLUSTER_SLOTS


def timeline(user_id: int) -> str:
    return f"tl:{{{user_id}}}"


def timeline_member(post_id: int) -> bytes:
    return str(post_id).zfill(TIMELINE_ID_WIDTH).encode()


def post_id_from_member(member: bytes | str) -> int:
    return int(member)


def following(user_id: int) -> str:
    """SET of the ids a user follows, a cache of Postgres for the feed read path (the
    unfollow filter, the choice of celebrity-tier authors to merge); it always holds the
    member "0" (no user has id 0), so an existing key is never mistaken for a missing one."""
    return f"fl:{{{user_id}}}"


def following_version(user_id: int) -> str:
    """Changed (to a random token) by every follow or unfollow of the user: a cache fill
    that read Postgres before the change is refused (server/feed/following.py)."""
    return f"flv:{{{user_id}}}"


def presence(user_id: int) -> str:
    """Set of the gateway nodes holding a live connection of the user, with a TTL the
    gateways refresh (gateway/presence.py). Test it with EXISTS: MGET/GET see no value."""
    return f"online:{{{user_id}}}"


def post_cache(post_id: int) -> str:
    """Serialized post body (without counters), used to hydrate timelines."""
    return f"post:{post_id}"


def post_counters(post_id: int) -> str:
    """A post's author and counts as one string, "author,likes,reposts,replies", or a
    tombstone once it is deleted (core/post_cache.py).
    (Named apart from the HASH "postc:" that held them before: no type clash.)"""
    return f"pcnt:{post_id}"


def author_recent(author_id: int) -> str:
    """Recent post ids of an author, merged into feeds at read time (celebrity tier)."""
    return f"ap:{{{author_id}}}"


def idempotency(user_id: int, key: str) -> str:
    return f"idem:{{{user_id}}}:{key}"


def post_rate(user_id: int) -> str:
    return f"rl:post:{{{user_id}}}"


def fanout_checkpoint(post_id: int) -> str:
    """Last follower id written for a post being fanned out (resume after a crash)."""
    return f"fo:ck:{post_id}"


def push_feed_window(user_id: int) -> str:
    """Set (NX, with the window as TTL) when a feed push goes to a user: at most one per
    window, whatever the number of posts."""
    return f"push:feed:{user_id}"


def push_alert_sent(user_id: int, job_id: str) -> str:
    """One alert push job claimed for sending: a replayed job is not pushed twice."""
    return f"push:alert:{user_id}:{job_id}"


FANOUT_CONFIG = "fo:config"  # HASH push_max / throttle_max: runtime tier thresholds


def service_health(service: str, node: str) -> str:
    """Health heartbeat of one process, with a TTL (read by the ops dashboard)."""
    return f"health:{service}:{node}"


def node_stats(service: str, node: str) -> str:
    return f"stats:{service}:{node}"


def node_stats_index(service: str) -> str:
    """ZSET of a service's nodes scored by their last report (ms): readers find the nodes
    here, not by a SCAN whose cost grows with every key in Redis."""
    return f"stats-nodes:{service}"


# Pub/sub channels (not keys: no TTL, nothing stored). Hash-tagged like the keys, in
# both modes: on Redis Cluster a sharded channel (SPUBLISH/SSUBSCRIBE) lives on the node
# of its slot, so a user's channel shares the slot of the user's timeline and presence
# (fan-out's script publishes it on the node it already runs on), and an author's channel
# sits in the author's slot. One channel per slot spreads channels over every node.
def user_channel(user_id: int) -> str:
    return f"u:{{{user_id}}}"


def author_channel(author_id: int) -> str:
    return f"a:{{{author_id}}}"


# The ranked feed's feature store and page snapshots (ranking/store.py).
def ranking_affinity(user_id: int) -> str:
    """ZSET author id -> the user's likes, replies and reposts of that author, each
    weighted by 2^(its time / the half-life): decayed by one multiplication at read time."""
    return f"rk:aff:{{{user_id}}}"


def ranking_engagers(post_id: int) -> str:
    """ZSET user id -> ms: who liked or reposted the post lately (social proof), capped."""
    return f"rk:eng:{post_id}"


def ranking_seen(user_id: int) -> str:
    """ZSET timeline member -> ms: posts the user was shown on ranked pages, capped."""
    return f"rk:seen:{{{user_id}}}"


def ranking_snapshot(user_id: int, token: int) -> str:
    """The ranked list a first ranked page made (ids and reasons), with a TTL; the later
    pages of that feed page through it (their cursor carries the token)."""
    return f"rk:snap:{{{user_id}}}:{token}"
