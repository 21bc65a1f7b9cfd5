"""Authentication: bearer-token middleware, password hashing, sign-up and sign-in.

Passwords are hashed with argon2id (memory-hard) in a worker thread so one sign-in never
stalls the event loop. Sign-in answers the same for an unknown handle and a wrong
password (no account enumeration), and still spends the hashing time for unknown ones.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core import timelines
from core.auth import TokenError, TokenSigner
from server.context import USER_ID, ServerContext, ctx
from server.contract.accounts import SignIn, SignUp
from server.contract.fields import PASSWORD_MAX
from server.domain import users
from server.feed.hydrate import REDIS_ERRORS
from server.handlers import ops
from server.http import validation as v
from server.http.errors import ApiError
from server.http.service_json import json

log = logging.getLogger(__name__)

PUBLIC_PATHS = {"/v1/users", "/v1/sessions", "/v1/openapi.json", "/v1/push/vapid-public-key"}


def build_hasher() -> PasswordHasher:
    # OWASP's argon2id minimum (19 MiB, 2 passes): ~20 ms here; memory-hard on purpose.
    return PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


def requires_auth(request: web.Request) -> bool:
    if not request.path.startswith("/v1/"):
        return False
    return not (request.method == "POST" and request.path in PUBLIC_PATHS) and not (
        request.method == "GET" and request.path in PUBLIC_PATHS
    )


def bearer_value(header: str | None) -> str | None:
    """The token of an Authorization header (None: no header); raises ApiError (401) for
    anything but a bearer token. Also server/http/fast_feed.py's, so both paths read it alike."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "invalid_token", "Authorization must be 'Bearer <token>'")
    return token.strip()


def verified_user(signer: TokenSigner, header: str | None) -> int | None:
    """The user an Authorization header's token proves; None without the header; ApiError
    (401) for anything else. The middleware and the feed's fast path both authorize here."""
    token = bearer_value(header)
    if token is None:
        return None
    try:
        return signer.verify(token).user_id
    except TokenError as exc:
        raise ApiError(
            401,
            exc.code,
            str(exc),
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


def authenticate(request: web.Request) -> None:
    """Checks the request's token where one is needed and notes whose it is (USER_ID);
    raises ApiError (401) otherwise. Operator paths take the operators' token only."""
    if request.path.startswith(ops.OPERATOR_PREFIX):  # operators' token, never a user's
        ops.require_operator(request)
    elif requires_auth(request):
        user = verified_user(ctx(request).signer, request.headers.get("Authorization"))
        if user is None:
            raise ApiError(
                401,
                "unauthorized",
                "sign in first: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request[USER_ID] = user


async def sign_up(request: web.Request) -> web.Response:
    body = await v.read_body(request, SignUp)
    handle, password, display_name = body.handle, body.password, body.display_name or ""
    c = ctx(request)
    password_hash = await asyncio.to_thread(c.hasher.hash, password)
    new_id = await users.create(c, handle, display_name or handle, password_hash)
    return json({"user_id": str(new_id), "handle": handle, "token": c.signer.issue(new_id)}, 201)


async def sign_in(request: web.Request) -> web.Response:
    body = await v.read_body(request, SignIn)
    handle, password = body.handle, body.password
    c = ctx(request)
    row = await users.credentials(c.db, handle)
    # A password longer than sign-up allows can match nothing (truncating it would let
    # any suffix after a real 128-character password in); it is still hashed, against
    # the dummy, so it takes as long as any other refusal.
    fits = len(password) <= PASSWORD_MAX
    stored = row["password_hash"] if row and fits else c.dummy_hash
    try:
        await asyncio.to_thread(c.hasher.verify, stored, password[:PASSWORD_MAX])
        ok = row is not None and fits
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None:
        raise ApiError(401, "invalid_credentials", "handle or password is wrong")
    await _mark_active(c, row["id"])
    return json({"user_id": str(row["id"]), "token": c.signer.issue(row["id"])})


async def _mark_active(c: ServerContext, user: int) -> None:
    """Fan-out skips users inactive for FANOUT_ACTIVE_DAYS, so a returning user's stored
    timeline may miss posts: drop it, and the next read rebuilds it from Postgres."""
    if await users.mark_active(c.db, user, c.settings.fanout_active_days):
        try:
            await timelines.drop(c.redis, user)
        except REDIS_ERRORS as exc:
            log.warning("stale timeline of returning user %d not dropped: %s", user, exc)
