"""This deployment's VAPID key pair (Web Push sender identity, RFC 8292).

Generated on first start by whichever process needs it first and stored in Postgres, so
every API server serves the same public key and every push worker signs with the
matching private key. Browsers bind a subscription to the public key: replacing it
silently would orphan every subscription, so it is never rotated here.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True, slots=True)
class VapidKeys:
    private_pem: str = field(repr=False)
    public_key: str  # base64url (no padding) of the uncompressed P-256 point, 65 bytes


def generate() -> VapidKeys:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return VapidKeys(pem, base64.urlsafe_b64encode(point).rstrip(b"=").decode())


async def load_or_create(db: asyncpg.Pool) -> VapidKeys:
    """The stored pair; the first caller stores a new one. Two processes starting at once
    both try, one insert wins and both read the winner."""
    candidate = generate()
    await db.execute(
        "INSERT INTO vapid_keys (id, private_pem, public_key) VALUES (1, $1, $2)"
        " ON CONFLICT (id) DO NOTHING",
        candidate.private_pem,
        candidate.public_key,
    )
    row = await db.fetchrow("SELECT private_pem, public_key FROM vapid_keys WHERE id = 1")
    assert row is not None  # inserted just above, and never deleted
    return VapidKeys(row["private_pem"], row["public_key"])
