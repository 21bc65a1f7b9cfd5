"""Close codes of the live stream and what a client should do. The README shows this
table; clients key their reconnect logic on the code."""

from __future__ import annotations

import enum

# A close we start waits this long for the peer's close frame (or for it to hang up, or
# to read what is still queued for it) before the TCP connection is cut; aiohttp waits 10 s.
CLOSE_TIMEOUT = 5.0


class Close(enum.IntEnum):
    NORMAL = 1000  # client or server finished: no reconnect needed
    GOING_AWAY = 1001  # client navigated away
    PROTOCOL_ERROR = 1002  # broken WebSocket framing (unmasked, reserved bits...): fix the client
    INVALID_DATA = 1007  # a text message that is not UTF-8: fix the client
    POLICY = 1008  # garbage frames / client sent something it must not: do not retry as is
    TOO_BIG = 1009  # a client frame over the size limit: do not retry as is
    SHUTTING_DOWN = 1012  # this node is restarting: reconnect (another node) with ?since=
    TRY_AGAIN = 1013  # cannot serve or resume right now (Redis/Postgres/API away): back off
    UNAUTHORIZED = 4001  # token missing/invalid/expired: get a new token, do not retry as is
    TOO_MANY_CONNECTIONS = 4002  # per-user connection limit reached: close another one first
    SLOW_CONSUMER = 4008  # could not keep up: reconnect with ?since= (nothing is lost)
    RESUME = 4010  # pub/sub link dropped or channel's slot moved, events may be lost: resume
    RATE_LIMITED = 4029  # too many new connections from this address: back off, then retry


RECONNECT = {
    Close.NORMAL: "no",
    Close.GOING_AWAY: "no",
    Close.PROTOCOL_ERROR: "no (fix the client)",
    Close.INVALID_DATA: "no (fix the client)",
    Close.POLICY: "no (fix the client)",
    Close.TOO_BIG: "no (fix the client)",
    Close.SHUTTING_DOWN: "yes, at once, with ?since=<last id>",
    Close.TRY_AGAIN: "yes, after a back-off of a few seconds, with ?since=<last id>",
    Close.UNAUTHORIZED: "only with a new token",
    Close.TOO_MANY_CONNECTIONS: "after closing another connection",
    Close.SLOW_CONSUMER: "yes, with ?since=<last id>",
    Close.RESUME: "yes, at once, with ?since=<last id>",
    Close.RATE_LIMITED: "yes, after a back-off of a few seconds",
}
