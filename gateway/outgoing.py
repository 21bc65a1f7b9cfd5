"""One event as it leaves this node: the bytes fan-out serialized, plus their framing
for each transport, each built once per node however many connections receive it.

What the node needs to know about an event (its type, post id, the id that makes it
"the same event") is parsed only when asked, and at most once per event per node
however many connections receive it."""

from __future__ import annotations

import struct

import orjson

from core.ids import id_timestamp_ms

_UNPARSED = -1  # sentinel for "not looked at yet" (ids and timestamps are never negative)


# Frame headers by payload size (RFC 6455 5.2: FIN + text opcode, then the length in 7,
# 7+16 or 7+64 bits); packed by a precompiled Struct, once per event on the hot path.
_SHORT = [bytes((0x81, size)) for size in range(126)]
_MEDIUM = struct.Struct(">BBH").pack
_LONG = struct.Struct(">BBQ").pack


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2): servers never mask."""
    size = len(payload)
    if size < 126:
        return _SHORT[size] + payload
    if size < 65_536:
        return _MEDIUM(0x81, 126, size) + payload
    return _LONG(0x81, 127, size) + payload


class Outgoing:
    __slots__ = ("_event_id", "_kind", "_live", "_once_key", "_sse", "_ws", "payload")

    def __init__(self, payload: bytes, live: bool = False) -> None:
        self.payload = payload
        self._live = live
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._kind: str | None = None
        self._event_id: int | None = _UNPARSED
        self._once_key: int | None = None

    def _parse(self) -> None:
        once_key = None
        try:
            head = orjson.loads(self.payload)
            kind = str(head.get("type", ""))
            raw_id = head.get("id") if kind == "post" else None
            event_id = int(raw_id) if raw_id is not None else None
            once_key = event_id
            if kind == "notification":
                once_key = int(head["data"]["id"])
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError):
            kind, event_id = "", None
        self._kind, self._event_id, self._once_key = kind, event_id, once_key

    @property
    def kind(self) -> str:
        if self._kind is None:
            self._parse()
        assert self._kind is not None
        return self._kind

    @property
    def event_id(self) -> int | None:
        """The post id of a post event (None for every other event)."""
        if self._event_id == _UNPARSED:
            self._parse()
        return self._event_id

    @property
    def once_key(self) -> int | None:
        """What makes two events the same, for a connection that must not send one twice:
        a post's id, a notification's id (both from the one id generator, so they never
        collide); None for events that may repeat harmlessly (delete, control)."""
        if self._event_id == _UNPARSED:
            self._parse()
        return self._once_key

    @property
    def created_ms(self) -> int | None:
        """A live post's creation time (from its id), for post-to-socket latency; replayed
        posts are old by design and do not count."""
        if not self._live:
            return None
        event_id = self.event_id
        return id_timestamp_ms(event_id) if event_id is not None else None

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = ws_frame(self.payload)
        return self._ws

    @property
    def sse(self) -> bytes:
        """An SSE event; post events carry their id so Last-Event-ID resumes after it."""
        if self._sse is None:
            event_id = self.event_id
            head = f"id: {event_id}\n" if event_id is not None else ""
            self._sse = head.encode() + b"data: " + self.payload + b"\n\n"
        return self._sse


def control(kind: str) -> Outgoing:
    return Outgoing(orjson.dumps({"type": kind}))
