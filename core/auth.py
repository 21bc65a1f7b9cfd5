"""Bearer tokens signed by the server (HMAC-SHA256) and shared by the API and the gateway.

A token is `base64url(claims).base64url(signature)`; claims hold the user id (as a
string, so any JSON reader keeps it exact), issue time and expiry. The gateway checks
tokens without a database round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

from core.recent import Recent

MAX_TOKEN_LENGTH = 512  # anything longer is hostile; refuse before doing any work
MAX_USER_ID = 2**63 - 1  # ids are Postgres bigints
# Tokens already verified, by their exact text: a feed client sends the same token with
# every request, and the HMAC, base64 and JSON of a verification cost ~10 us each time.
# Only good tokens go in, and expiry is checked on every use. The recently used are kept
# (core/recent.py): ~250 bytes each, so 100 000 active clients cost ~25 MB.
VERIFIED_MAX = 100_000


class TokenError(ValueError):
    """Token is malformed, forged or expired; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    issued_at: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: str, ttl_seconds: int, remember: int | None = None) -> None:
        """`remember`: how many verified tokens to keep (VERIFIED_MAX by default)."""
        self._key = hashlib.sha256(b"feed-token-v1:" + secret.encode()).digest()
        self._ttl = ttl_seconds
        self._verified: Recent[str, TokenClaims] = Recent(
            VERIFIED_MAX if remember is None else remember
        )

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, user_id: int, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return self.sign({"sub": str(user_id), "iat": issued, "exp": issued + self._ttl})

    def sign(self, claims: dict[str, object]) -> str:
        """A token for these claims as they are (issue() makes the usual ones; verify()
        accepts only those: the tests sign odd ones to show they are refused)."""
        payload = orjson.dumps(claims)
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def verify(self, token: str, now: float | None = None) -> TokenClaims:
        known = self._verified.get(token)
        if known is not None:
            if (time.time() if now is None else now) >= known.expires_at:
                raise TokenError("token_expired", "token has expired; sign in again")
            return known
        claims = self._verify(token, now)
        self._verified.put(token, claims)
        return claims

    def _verify(self, token: str, now: float | None) -> TokenClaims:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise TokenError("invalid_token", "token is malformed")
        payload_part, signature_part = token.split(".")
        try:
            payload = _unb64(payload_part)
            signature = _unb64(signature_part)
        except (binascii.Error, ValueError):
            raise TokenError("invalid_token", "token is malformed") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenError("invalid_token", "token signature is not valid")
        try:
            claims = orjson.loads(payload)
            user_id = _user_id(claims["sub"])
            issued, expires = int(claims["iat"]), int(claims["exp"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise TokenError("invalid_token", "token claims are malformed") from None
        if (time.time() if now is None else now) >= expires:
            raise TokenError("token_expired", "token has expired; sign in again")
        return TokenClaims(user_id, issued, expires)


def _user_id(sub: object) -> int:
    """`sub` exactly as issue() writes it: a positive 64-bit id in ASCII decimal. int()
    alone would also take "-5", "1_2", " 7", non-ASCII digits and ids past int64, each a
    500 further on (a foreign key, or Postgres refusing the value)."""
    if not isinstance(sub, str) or not (0 < len(sub) <= 19 and sub.isascii() and sub.isdigit()):
        raise ValueError("sub")
    user_id = int(sub)
    if not 0 < user_id <= MAX_USER_ID:
        raise ValueError("sub")
    return user_id
