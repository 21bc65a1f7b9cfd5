"""RFC 6455 framing for the server side: parsing the masked frames clients send (with
the limits we enforce) and building the unmasked control frames we send. Pure functions
on bytes: nothing here touches a socket or knows what a connection is."""

from __future__ import annotations

from typing import NamedTuple

from gateway.codes import Close

MAX_CLIENT_MESSAGE = 4096  # bytes, a whole (reassembled) client message

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = 123  # bytes: a control frame's payload minus the 2-byte code

PING_FRAME = b"\x89\x00"  # FIN + ping, no payload


class FrameError(Exception):
    """The client broke the protocol or a limit: the connection is failed with `code`."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Frame(NamedTuple):
    fin: bool
    opcode: int
    payload: bytes


def unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR with the 4-byte key, as one big-integer operation (no per-byte Python loop:
    client messages are at most 4 KiB, so this stays cheap)."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def _check_header(first: int, second: int) -> None:
    if first & 0x70:
        raise FrameError(Close.PROTOCOL_ERROR, "reserved bits set (no extension negotiated)")
    opcode = first & 0x0F
    if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
        raise FrameError(Close.PROTOCOL_ERROR, f"reserved opcode {opcode}")
    if not second & 0x80:
        raise FrameError(Close.PROTOCOL_ERROR, "client frames must be masked")
    if opcode in CONTROL_OPCODES:
        if not first & 0x80:
            raise FrameError(Close.PROTOCOL_ERROR, "fragmented control frame")
        if second & 0x7F > MAX_CONTROL_PAYLOAD:
            raise FrameError(Close.PROTOCOL_ERROR, "control frame over 125 bytes")


def parse_frame(buf: bytes, pos: int) -> tuple[Frame | None, int]:
    """The frame starting at buf[pos], unmasked, and the position after it; (None, pos)
    while it is incomplete. Raises FrameError as soon as the header shows a violation,
    so an oversized frame is refused before its payload is buffered."""
    available = len(buf) - pos
    if available < 2:
        return None, pos
    first, second = buf[pos], buf[pos + 1]
    _check_header(first, second)
    size, head = second & 0x7F, 2
    if size == 126:
        if available < 4:
            return None, pos
        size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
    elif size == 127:
        if available < 10:
            return None, pos
        size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
    if size > MAX_CLIENT_MESSAGE:
        raise FrameError(Close.TOO_BIG, f"frame over {MAX_CLIENT_MESSAGE} bytes")
    end = pos + head + 4 + size
    if len(buf) < end:
        return None, pos
    mask = buf[pos + head : pos + head + 4]
    payload = unmask(mask, buf[pos + head + 4 : end])
    return Frame(bool(first & 0x80), first & 0x0F, payload), end


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4: 1004-1006 and 1015 are never sent on the wire; 1016-2999 are reserved.
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def parse_close(payload: bytes) -> int | None:
    """The code of a client's close frame (None: no code given)."""
    if not payload:
        return None
    if len(payload) == 1:
        raise FrameError(Close.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise FrameError(Close.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(Close.INVALID_DATA, "close reason is not UTF-8") from None
    return code


def control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    if code is None:
        return control_frame(CLOSE, b"")
    encoded = reason.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()
    return control_frame(CLOSE, code.to_bytes(2, "big") + encoded)
