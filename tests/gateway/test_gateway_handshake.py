"""Conformance of the gateway's own WebSocket handshake (gateway/protocols/handshake.py,
RFC 6455 section 4.2): the request line we take, the strict parse of the head, the
checks of an upgrade, and the bytes of our answers. Pure functions, no socket; the same
requests over a real socket are in test_gateway_protocol.py. A property test feeds random
header fields and checks they are parsed or refused with a HandshakeError, nothing else."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocols.handshake import (
    MAX_HEADERS,
    HandshakeError,
    Request,
    check_upgrade,
    error_response,
    is_stream_request_line,
    parse_head,
    switching_protocols,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the sample key of RFC 6455 1.3
GOOD = {
    "Host": "gw.example",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def head(target: str = "/v1/stream", **fields: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
    return "\r\n".join(lines).encode("latin-1")


def upgrade_head(target: str = "/v1/stream", **changes: str | None) -> Request:
    fields = {**GOOD, **changes}
    return parse_head(head(target, **{k: v for k, v in fields.items() if v is not None}))


def refusal(request: Request, origins: str = "*") -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        check_upgrade(request, origins)
    return info.value


@pytest.mark.parametrize(
    ("line", "ours"),
    [
        (b"GET /v1/stream HTTP/1.1", True),
        (b"GET /v1/stream?access_token=t&since=5 HTTP/1.1", True),
        (b"GET /v1/stream HTTP/1.0", False),  # an upgrade is HTTP/1.1 (RFC 6455 4.1)
        (b"POST /v1/stream HTTP/1.1", False),
        (b"GET /v1/stream/sse HTTP/1.1", False),
        (b"GET /v1/streams HTTP/1.1", False),
        (b"GET  /v1/stream HTTP/1.1", False),
        (b"GET /v1/stream HTTP/1.1 x", False),
    ],
)
def test_only_get_v1_stream_over_http_1_1_is_ours(line: bytes, ours: bool) -> None:
    assert is_stream_request_line(line) is ours


def test_the_accept_key_is_the_one_of_rfc_6455() -> None:
    answer = switching_protocols(KEY)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert b"\r\nUpgrade: websocket\r\n" in answer and answer.endswith(b"\r\n\r\n")


def test_a_good_upgrade_gives_key_token_and_since() -> None:
    upgrade = check_upgrade(upgrade_head("/v1/stream?since=42&access_token=q"), "*")
    assert (upgrade.key, upgrade.token, upgrade.since) == (KEY, "q", "42")
    # The header's token wins over the query's; the first of repeated parameters counts.
    request = upgrade_head("/v1/stream?access_token=q&since=1&since=2", Authorization="Bearer h")
    upgrade = check_upgrade(request, "*")
    assert (upgrade.token, upgrade.since) == ("h", "1")


def test_field_names_are_case_insensitive_and_lists_are_tokens() -> None:
    request = parse_head(
        b"GET /v1/stream HTTP/1.1\r\nhOsT: a\r\nUPGRADE: WebSocket\r\n"
        b"connection: keep-alive, Upgrade\r\nSEC-WEBSOCKET-KEY: " + KEY.encode() + b"\r\n"
        b"sec-websocket-version: 13"
    )
    assert request.wants_websocket and check_upgrade(request, "*").key == KEY


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"Host": None}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Connection": None}, 400),
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),  # decodes to 5 bytes, not 16
        ({"Sec-WebSocket-Key": "!" * 24}, 400),
        ({"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Version": None}, 426),
        ({"Content-Length": "0"}, 400),
        ({"Transfer-Encoding": "chunked"}, 400),
    ],
)
def test_a_broken_upgrade_is_refused_with_its_status(
    changes: dict[str, str | None], status: int
) -> None:
    error = refusal(upgrade_head("/v1/stream", **changes))
    assert error.status == status
    if status == 426:
        assert error.headers == {"Sec-WebSocket-Version": "13"}


def test_the_origin_is_checked_first() -> None:
    request = upgrade_head(Origin="https://evil.example", **{"Sec-WebSocket-Version": "8"})
    assert refusal(request, "https://app.example").status == 403
    assert check_upgrade(upgrade_head(Origin="https://app.example"), "https://app.example")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/stream HTTP/1.1\r\nHost : a",  # space before the colon
        b"GET /v1/stream HTTP/1.1\r\nHost: a\r\n folded",  # obsolete line folding
        b"GET /v1/stream HTTP/1.1\r\nHost a",  # no colon
        b"GET /v1/stream HTTP/1.1\r\nHost: a\x00b",  # NUL in a value
        b"GET /v1/stream HTTP/1.1\r\nHost: a\nX: b",  # bare LF
        b"GET /v1/stream HTTP/1.1\r\nHost: a\rb",  # bare CR
        b"GET /v1/stream HTTP/1.1\r\nHost: a\r\nHost: b",  # a single field twice
        b"GET /v1/stream HTTP/1.1\r\nSec-WebSocket-Key: a\r\nsec-websocket-key: b",
        b"GET /v1/stream?\x7f HTTP/1.1\r\nHost: a",  # not a valid target
    ],
)
def test_a_malformed_head_is_a_bad_request(raw: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_head(raw)
    assert info.value.status == 400


def test_list_fields_given_twice_are_joined() -> None:
    request = parse_head(head(Connection="keep-alive") + b"\r\nConnection: Upgrade")
    assert request.tokens("connection") == {"keep-alive", "upgrade"}


def test_too_many_fields_or_query_parameters_are_refused() -> None:
    fields = {f"X-{n}": "v" for n in range(MAX_HEADERS + 1)}
    with pytest.raises(HandshakeError) as info:
        parse_head(head(**fields))
    assert info.value.status == 431
    many = "&".join(f"p{n}=1" for n in range(40))
    assert refusal(upgrade_head(f"/v1/stream?{many}")).status == 400


def test_error_answers_are_json_in_the_api_shape_with_cors() -> None:
    error = HandshakeError(426, "upgrade_required", "speak 13", {"Sec-WebSocket-Version": "13"})
    answer = error_response(error, "https://app.example")
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nSec-WebSocket-Version: 13" in head_part
    assert b"\r\nAccess-Control-Allow-Origin: https://app.example" in head_part
    assert f"Content-Length: {len(body)}".encode() in head_part
    assert body == b'{"error":{"code":"upgrade_required","message":"speak 13"}}'


field_names = st.sampled_from(
    ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin"]
) | st.binary(min_size=0, max_size=12)
field_values = st.binary(max_size=40) | st.sampled_from([b"websocket", b"Upgrade", b"13", KEY])


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(st.tuples(field_names, field_values), max_size=12),
    st.binary(max_size=30).filter(lambda q: not {32, 13, 10} & set(q)),
)
def test_random_heads_parse_or_are_refused_with_a_handshake_error(
    fields: list[tuple[str | bytes, bytes | str]], query: bytes
) -> None:
    lines = [b"GET /v1/stream?" + query + b" HTTP/1.1"]
    for name, value in fields:
        name_bytes = name.encode() if isinstance(name, str) else name
        value_bytes = value.encode() if isinstance(value, str) else value
        lines.append(name_bytes + b": " + value_bytes)
    try:
        request = parse_head(b"\r\n".join(lines))
        upgrade = check_upgrade(request, "https://app.example")
    except HandshakeError as error:
        assert error.status in (400, 403, 426, 431)
        assert error_response(error, None).startswith(b"HTTP/1.1 ")
    else:
        assert len(base64.b64decode(upgrade.key)) == 16
        assert switching_protocols(upgrade.key).endswith(b"\r\n\r\n")
