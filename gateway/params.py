"""What a connection asks for (token, since, origin), shared by the aiohttp
handlers and the raw WebSocket handshake so both read requests alike."""

from __future__ import annotations

from gateway.codes import Close
from gateway.node import Refused

MAX_ID = 2**63 - 1


def bearer_token(authorization: str | None, access_token: str | None) -> str | None:
    header = authorization or ""
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return access_token or None


def parse_since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise Refused(Close.POLICY, 400, "invalid_since", "since must be a post id")
    return int(raw)


def origin_allowed(origin: str | None, allowed: str) -> bool:
    if allowed.strip() == "*" or origin is None:
        return True
    return origin in {o.strip() for o in allowed.split(",")}


def cors_headers(origin: str | None) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
