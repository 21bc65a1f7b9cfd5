"""Everything a request handler may use, built once at start-up (typed app state)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web
from argon2 import PasswordHasher
from asyncpg.pool import PoolConnectionProxy

from core.auth import TokenSigner
from core.clients import AnyRedis
from core.ids import IdGenerator
from core.replica import ReplicaReads
from core.resources import KafkaLink
from core.settings import Settings
from core.topics import Topics
from server.outbox import Outbox


@dataclass(frozen=True, slots=True)
class ServerContext:
    settings: Settings
    db: asyncpg.Pool
    # Read-only queries that may run on the read replica, as fresh as the primary
    # (core/replica.py): rebuilds, the feed's Postgres reads, profile posts, search.
    reads: ReplicaReads
    redis: AnyRedis  # a cluster client when settings.redis_cluster
    kafka: KafkaLink
    ids: IdGenerator
    signer: TokenSigner
    hasher: PasswordHasher
    dummy_hash: str  # verified against for unknown handles, so timing reveals nothing
    topics: Topics
    outbox: Outbox  # where events wait for the relay (this deployment's prefix)
    vapid_public_key: str  # base64url P-256 point browsers subscribe with (core/vapid.py)


# A connection checked out of the pool, or a plain one (same query API).
Conn = asyncpg.Connection | PoolConnectionProxy

CTX = web.AppKey("server_ctx", ServerContext)
USER_ID = web.RequestKey("user_id", int)  # set by the auth middleware


def ctx(request: web.Request) -> ServerContext:
    return request.app[CTX]


def user_id(request: web.Request) -> int:
    uid: int = request[USER_ID]
    return uid
