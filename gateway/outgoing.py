"""One event as it leaves this node: the bytes fan-out serialized, plus their framing
for each transport, each built once per node however many connections receive it."""

from __future__ import annotations

import orjson

from core.ids import id_timestamp_ms


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2): servers never mask."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65_536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


class Outgoing:
    __slots__ = ("_sse", "_ws", "created_ms", "event_id", "kind", "payload")

    def __init__(self, payload: bytes, live: bool = False) -> None:
        self.payload = payload
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        try:
            head = orjson.loads(payload)
            self.kind: str = str(head.get("type", ""))
            raw_id = head.get("id") if self.kind == "post" else None
            self.event_id: int | None = int(raw_id) if raw_id is not None else None
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            self.kind, self.event_id = "", None
        # A live post's creation time (from its id), for post-to-socket latency; replayed
        # posts are old by design and do not count.
        self.created_ms: int | None = (
            id_timestamp_ms(self.event_id) if live and self.event_id is not None else None
        )

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = ws_frame(self.payload)
        return self._ws

    @property
    def sse(self) -> bytes:
        """An SSE event; post events carry their id so Last-Event-ID resumes after it."""
        if self._sse is None:
            head = f"id: {self.event_id}\n" if self.event_id is not None else ""
            self._sse = head.encode() + b"data: " + self.payload + b"\n\n"
        return self._sse


def control(kind: str) -> Outgoing:
    return Outgoing(orjson.dumps({"type": kind}))
