"""Conformance of the gateway's own RFC 6455 framing (gateway/protocols/frames.py) and of
the frame-level state machine of WebSocketProtocol (fragments, control frames, close
handshake, UTF-8), without a socket: bytes in, frames, errors and bytes out. The property
tests at the end encode random valid frames and check they come back exactly however the
bytes are split, and that random bytes only ever raise the documented FrameError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.codes import Close
from gateway.protocols.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    MAX_CLIENT_MESSAGE,
    MAX_CLOSE_REASON,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameError,
    close_frame,
    control_frame,
    parse_close,
    parse_frame,
    unmask,
)
from gateway.protocols.websocket import WebSocketProtocol

MASK = b"\x37\xfa\x21\x3d"
ALL_OPCODES = range(16)
VALID_OPCODES = (CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG)


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes = MASK,
    masked: bool = True,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """A client frame as RFC 6455 5.2 lays it out. `length` overrides the declared
    payload length, `form` forces the 7-bit (0), 16-bit (126) or 64-bit (127) encoding."""
    declared = len(payload) if length is None else length
    if form is None:
        form = 0 if declared < 126 else 126 if declared < 65536 else 127
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if form == 0:
        head += bytes([mask_bit | declared])
    elif form == 126:
        head += bytes([mask_bit | 126]) + declared.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + declared.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + mask + unmask(mask, payload)


def parse_some(buf: bytes) -> tuple[list[Frame], int]:
    """The complete frames at the start of buf, and where the incomplete rest begins."""
    frames: list[Frame] = []
    pos = 0
    while True:
        frame, pos = parse_frame(buf, pos)
        if frame is None:
            return frames, pos
        frames.append(frame)


def parse_all(buf: bytes) -> list[Frame]:
    frames, pos = parse_some(buf)
    assert pos == len(buf), "bytes left after the last complete frame"
    return frames


def refused(buf: bytes) -> Close:
    with pytest.raises(FrameError) as info:
        parse_all(buf)
    return info.value.code


# -- opcodes -------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", ALL_OPCODES)
def test_every_opcode_is_parsed_or_refused_as_reserved(opcode: int) -> None:
    data = client_frame(opcode, b"hi")
    if opcode in VALID_OPCODES:
        assert parse_frame(data, 0) == (Frame(True, opcode, b"hi"), len(data))
    else:  # 0x3-0x7 and 0xB-0xF are reserved (RFC 6455 5.2)
        assert refused(data) == Close.PROTOCOL_ERROR


# -- lengths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header_size"), [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (MAX_CLIENT_MESSAGE, 4)]
)
def test_payload_lengths_in_each_length_form(size: int, header_size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    data = client_frame(BINARY, payload)
    assert len(data) == header_size + 4 + size
    assert parse_frame(data, 0) == (Frame(True, BINARY, payload), len(data))


@pytest.mark.parametrize("size", [MAX_CLIENT_MESSAGE + 1, 65_535, 65_536, 2**63 - 1, 2**64 - 1])
def test_a_frame_over_the_limit_is_refused_from_its_header_alone(size: int) -> None:
    """The length is judged before the payload is buffered: only the header is given."""
    header = client_frame(BINARY, b"", length=size)[: -len(MASK)]
    assert len(header) == (4 if size < 65536 else 10)
    assert refused(header) == Close.TOO_BIG


@pytest.mark.parametrize("form", [126, 127])
def test_a_length_in_a_longer_form_than_needed_is_read_by_its_value(form: int) -> None:
    data = client_frame(TEXT, b"short", form=form)
    assert parse_frame(data, 0) == (Frame(True, TEXT, b"short"), len(data))


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000])
def test_an_incomplete_frame_waits_for_more_at_every_byte(size: int) -> None:
    data = client_frame(TEXT, b"x" * size)
    for cut in range(len(data)):
        assert parse_frame(data[:cut], 0) == (None, 0), cut
    assert parse_frame(data, 0)[1] == len(data)


def test_frames_are_read_from_a_position_one_after_another() -> None:
    frames = [Frame(False, TEXT, b"ab"), Frame(True, PING, b""), Frame(True, CONTINUATION, b"c")]
    data = b"junk" + b"".join(client_frame(f.opcode, f.payload, fin=f.fin) for f in frames)
    pos = 4
    for expected in frames:
        frame, pos = parse_frame(data, pos)
        assert frame == expected
    assert pos == len(data) and parse_frame(data, pos) == (None, pos)


# -- masking -------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 8, 125, 4096])
def test_payloads_are_unmasked_with_the_key_repeated_every_four_bytes(
    mask: bytes, size: int
) -> None:
    payload = bytes((n * 7 + 3) % 256 for n in range(size))
    masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
    assert unmask(mask, masked) == payload
    assert unmask(mask, unmask(mask, payload)) == payload
    frame, _ = parse_frame(client_frame(BINARY, payload, mask=mask), 0)
    assert frame is not None and frame.payload == payload


def test_an_unmasked_client_frame_is_a_protocol_error() -> None:
    assert refused(client_frame(TEXT, b"hi", masked=False)) == Close.PROTOCOL_ERROR


# -- reserved bits, control frames ---------------------------------------------------


@pytest.mark.parametrize("rsv", [0b100, 0b010, 0b001, 0b111])
@pytest.mark.parametrize("opcode", [TEXT, CONTINUATION, PING])
def test_reserved_bits_are_a_protocol_error_without_an_extension(rsv: int, opcode: int) -> None:
    assert refused(client_frame(opcode, b"hi", rsv=rsv)) == Close.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [CLOSE, PING, PONG])
def test_control_frames_carry_at_most_125_bytes(opcode: int) -> None:
    payload = b"\x03\xe8" + b"r" * 123 if opcode == CLOSE else b"p" * 125
    assert parse_frame(client_frame(opcode, payload), 0)[0] == Frame(True, opcode, payload)
    assert refused(client_frame(opcode, payload + b"x")) == Close.PROTOCOL_ERROR
    # 126 or 127 in the 7-bit field is refused as well, whatever the extended length says.
    assert refused(client_frame(opcode, b"x", form=126)) == Close.PROTOCOL_ERROR
    assert refused(client_frame(opcode, b"x", form=127)) == Close.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [CLOSE, PING, PONG])
def test_a_fragmented_control_frame_is_a_protocol_error(opcode: int) -> None:
    assert refused(client_frame(opcode, b"", fin=False)) == Close.PROTOCOL_ERROR


def test_data_frames_keep_their_fin_bit() -> None:
    for opcode in (TEXT, BINARY, CONTINUATION):
        for fin in (True, False):
            data = client_frame(opcode, b"part", fin=fin)
            assert parse_frame(data, 0)[0] == Frame(fin, opcode, b"part")


# -- close codes (RFC 6455 7.4) ------------------------------------------------------

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
VALID_CLOSE_CODES += [3000, 3999, 4000, 4001, 4999]
# 1004-1006 and 1015 must never be sent; 1016-2999 are reserved; nothing below 1000 or
# above 4999 is defined.
INVALID_CLOSE_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_valid_close_codes_are_accepted(code: int) -> None:
    assert parse_close(code.to_bytes(2, "big")) == code
    assert parse_close(code.to_bytes(2, "big") + "bye ✓".encode()) == code


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_invalid_close_codes_are_a_protocol_error(code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_close(code.to_bytes(2, "big"))
    assert info.value.code == Close.PROTOCOL_ERROR


def test_a_close_without_a_payload_has_no_code_and_a_one_byte_payload_is_an_error() -> None:
    assert parse_close(b"") is None
    with pytest.raises(FrameError) as info:
        parse_close(b"\x03")
    assert info.value.code == Close.PROTOCOL_ERROR


@pytest.mark.parametrize("reason", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"ok\xf4\x90\x80\x80"])
def test_a_close_reason_that_is_not_utf8_is_invalid_data(reason: bytes) -> None:
    with pytest.raises(FrameError) as info:
        parse_close(b"\x03\xe8" + reason)
    assert info.value.code == Close.INVALID_DATA


def test_close_frames_we_send_fit_a_control_frame_and_cut_the_reason_at_a_character() -> None:
    assert close_frame(None) == b"\x88\x00"
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    long = close_frame(Close.SLOW_CONSUMER, "é" * 100)  # 200 bytes of reason
    assert long[1] == len(long) - 2 <= 125
    reason = long[4:]
    assert len(reason) <= MAX_CLOSE_REASON and reason.decode() == "é" * (len(reason) // 2)
    assert control_frame(PONG, b"abc") == b"\x8a\x03abc"


# -- the frame-level state machine of a connection -------------------------------------


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closing = False
        self.aborted = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0

    def server_frames(self) -> list[tuple[int, bytes]]:
        """What we sent, as (opcode, payload): server frames are unmasked."""
        frames, data = [], bytes(self.sent)
        while data:
            size, head = data[1] & 0x7F, 2
            if size == 126:
                size, head = int.from_bytes(data[2:4], "big"), 4
            frames.append((data[0] & 0x0F, data[head : head + size]))
            data = data[head + size :]
        return frames


class RecordingClient:
    def __init__(self) -> None:
        self.messages: list[str | None] = []
        self.closed: list[tuple[int, str]] = []

    def received(self, text: str | None) -> None:
        self.messages.append(text)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


class Owner:
    def lost(self, ws: WebSocketProtocol) -> None:
        pass


def connection() -> tuple[WebSocketProtocol, RecordingTransport, RecordingClient]:
    ws = WebSocketProtocol(Owner())  # type: ignore[arg-type]
    transport, client = RecordingTransport(), RecordingClient()
    ws.connection_made(transport)
    ws.client = client  # type: ignore[assignment]
    return ws, transport, client


def test_fragments_are_joined_and_control_frames_may_come_between_them() -> None:
    ws, transport, client = connection()
    text = "héllo wörld".encode()
    ws.data_received(
        client_frame(TEXT, text[:2], fin=False)  # splits the é across fragments
        + client_frame(PING, b"between")
        + client_frame(CONTINUATION, text[2:8], fin=False)
        + client_frame(CONTINUATION, text[8:])
        + client_frame(BINARY, b"\x00\xff")
    )
    assert client.messages == ["héllo wörld", None]
    assert transport.server_frames() == [(PONG, b"between")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(CONTINUATION, b"x"), Close.PROTOCOL_ERROR),  # nothing to continue
        (
            client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"),
            Close.PROTOCOL_ERROR,  # a new message inside a fragmented one
        ),
        (
            client_frame(BINARY, b"a" * 4000, fin=False) + client_frame(CONTINUATION, b"b" * 97),
            Close.TOO_BIG,  # the reassembled message is over the limit
        ),
        (client_frame(TEXT, b"\xc3\x28"), Close.INVALID_DATA),
        (client_frame(TEXT, b"\xe2\x82", fin=False) + client_frame(CONTINUATION, b"("), 1007),
        (client_frame(TEXT, b"ok", rsv=0b100), Close.PROTOCOL_ERROR),
        (client_frame(CLOSE, b"\x03\xed"), Close.PROTOCOL_ERROR),  # close code 1005
        (client_frame(CLOSE, b"\x03\xe8\xff"), Close.INVALID_DATA),
    ],
)
def test_a_broken_stream_fails_the_connection_with_its_code(data: bytes, code: int) -> None:
    ws, transport, client = connection()
    ws.data_received(data + client_frame(TEXT, b"after the error"))
    assert transport.server_frames()[-1][0] == CLOSE
    assert int.from_bytes(transport.server_frames()[-1][1][:2], "big") == code
    assert client.closed and client.closed[0][0] == code
    assert "after the error" not in client.messages and transport.eof
    ws.data_received(client_frame(TEXT, b"ignored"))  # failed: whatever arrives is dropped
    assert "ignored" not in client.messages


@pytest.mark.parametrize("payload", [b"", b"\x03\xe8", b"\x0f\xa0bye"])
def test_a_close_from_the_client_is_echoed_and_the_server_hangs_up(payload: bytes) -> None:
    ws, transport, client = connection()
    ws.data_received(client_frame(CLOSE, payload) + client_frame(TEXT, b"after close"))
    assert transport.server_frames() == [(CLOSE, payload[:2])]
    assert transport.closing and client.messages == []


def test_the_server_close_waits_for_the_peer_close_without_acting_on_data() -> None:
    ws, transport, client = connection()
    ws.begin_close(Close.SHUTTING_DOWN, "bye")
    ws.data_received(client_frame(TEXT, b"late") + client_frame(PING, b"p"))
    assert client.messages == [] and transport.server_frames() == [(CLOSE, b"\x03\xf4bye")]
    ws.data_received(client_frame(CLOSE, b"\x03\xe8"))
    assert transport.closing and len(transport.server_frames()) == 1  # no second close


def test_frames_split_anywhere_across_reads_arrive_once() -> None:
    data = (
        client_frame(TEXT, "ünïcode".encode(), fin=False)
        + client_frame(PING, b"x")
        + client_frame(CONTINUATION, b"!" * 300)
        + client_frame(BINARY, b"b" * 70)
    )
    for step in (1, 2, 3, 7, 64):
        ws, transport, client = connection()
        for start in range(0, len(data), step):
            ws.data_received(data[start : start + step])
        assert client.messages == ["ünïcode" + "!" * 300, None], step
        assert transport.server_frames() == [(PONG, b"x")]


# -- property-based: valid frames round-trip, anything else is a FrameError ------------

FUZZ = settings(
    max_examples=150,
    deadline=None,  # 2 noisy shared cores: a slow example is not a failure
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    opcode = draw(st.sampled_from(VALID_OPCODES))
    if opcode >= CLOSE:
        size = draw(st.sampled_from([0, 1, 2, 125]) | st.integers(0, 125))
        return Frame(True, opcode, draw(st.binary(min_size=size, max_size=size)))
    size = draw(st.sampled_from([0, 125, 126, 127, MAX_CLIENT_MESSAGE]) | st.integers(0, 300))
    return Frame(draw(st.booleans()), opcode, draw(st.binary(min_size=size, max_size=size)))


def encode(frame: Frame, mask: bytes) -> bytes:
    return client_frame(frame.opcode, frame.payload, fin=frame.fin, mask=mask)


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=3), st.binary(min_size=4, max_size=4))
@example([Frame(True, TEXT, b"")], b"\x00\x00\x00\x00")
def test_valid_frames_come_back_exactly_when_split_at_every_byte(
    sent: list[Frame], mask: bytes
) -> None:
    data = b"".join(encode(frame, mask) for frame in sent)
    assert parse_all(data) == sent
    # As the connection reads: what is incomplete is kept and parsed again with the rest.
    step = max(1, len(data) // 64)  # every byte for small inputs, 64 cuts for big ones
    for cut in range(0, len(data) + 1, 1 if len(data) < 512 else step):
        got, pos = [], 0
        for chunk in (data[:cut], data):
            while (parsed := parse_frame(chunk, pos))[0] is not None:
                frame, pos = parsed
                assert frame is not None
                got.append(frame)
        assert got == sent, cut


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 16))
def test_random_bytes_only_ever_raise_a_frame_error(data: bytes, pos: int) -> None:
    pos = min(pos, len(data))
    try:
        while True:
            frame, after = parse_frame(data, pos)
            if frame is None:
                assert after == pos
                break
            assert after > pos and frame.opcode in VALID_OPCODES
            pos = after
    except FrameError as exc:
        assert exc.code in (Close.PROTOCOL_ERROR, Close.TOO_BIG)


@FUZZ
@given(frames(), st.binary(min_size=4, max_size=4), st.integers(0, 2**16), st.integers(0, 255))
def test_a_corrupted_valid_frame_parses_or_raises_a_frame_error(
    frame: Frame, mask: bytes, where: int, value: int
) -> None:
    data = bytearray(encode(frame, mask))
    data[where % len(data)] = value
    try:
        parse_some(bytes(data) + b"\x00" * 16)
    except FrameError as exc:
        assert exc.code in (Close.PROTOCOL_ERROR, Close.TOO_BIG)


@FUZZ
@given(st.binary(max_size=130))
def test_random_close_payloads_give_a_valid_code_or_a_frame_error(payload: bytes) -> None:
    try:
        code = parse_close(payload)
    except FrameError as exc:
        assert exc.code in (Close.PROTOCOL_ERROR, Close.INVALID_DATA)
    else:
        assert code is None or code in range(1000, 5000)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_on_a_connection_never_raise(data: bytes) -> None:
    ws, transport, _ = connection()
    for start in range(0, len(data), 50):
        ws.data_received(data[start : start + 50])
    frames_sent = transport.server_frames()
    assert all(opcode in (PONG, CLOSE) for opcode, _ in frames_sent)
    assert [opcode for opcode, _ in frames_sent].count(CLOSE) <= 1
