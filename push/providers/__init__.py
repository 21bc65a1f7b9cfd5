"""The contract between the push worker and the provider adapters (apns.py, fcm.py,
webpush.py).

An adapter turns one send into an Outcome and never raises for anything the provider or
the network did; the worker decides from `result` alone what to do with the device and
the job, and uses `reason` as a metrics label (so reasons come from a bounded set).
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.settings import SettingsError

Provider = Literal["apns", "fcm", "webpush"]
# sent; invalid = disable the device; retry = retriable (429, 5xx, timeout, transport
# error); failed = permanent but not the device's fault (other 4xx: 413, 403, ...).
Result = Literal["sent", "invalid", "retry", "failed"]

# A provider asking us to wait longer than this is treated as asking for this long: the
# worker's own deadline (the push's TTL) bounds retries anyway.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Outcome:
    provider: Provider
    result: Result
    status: int | None  # HTTP status; None when there was no response
    reason: str  # short, from a bounded set: usable as a metrics label
    retry_after: float | None = None  # seconds, from Retry-After when present


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or
    unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER)


def http_reason(status: int) -> str:
    """A metrics-safe reason for an HTTP status (100-599, so the label set stays small)."""
    return f"http_{status}" if 100 <= status <= 599 else "http_other"


def client_ssl_context(ca_file: str, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """The system's trust store plus PUSH_CA_FILE (the test stand-ins' CA) when set."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"PUSH_CA_FILE cannot be loaded: {exc}") from None
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context
