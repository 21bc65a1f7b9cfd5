"""GATEWAY_NATIVE_WEBSOCKET=false, on raw sockets: the frame-level behaviours of
test_gateway_protocol.py that both implementations share run again here, unchanged,
against aiohttp's WebSocketResponse. Left out, because aiohttp's answers differ in detail
(documented, not a regression of this mode): it accepts unmasked client frames, echoes
a client's close with 1000 instead of its code, answers some broken handshakes with
other statuses, and counts a 4 096-byte fragmented message as too big (1009)."""

from __future__ import annotations

import dataclasses

import pytest

from core.settings import Settings

# Collected again in this module, so they see the settings below.
from tests.gateway.test_gateway_protocol import (  # noqa: F401
    gateway_settings,
    gw,
    new_user,
    test_a_peer_that_never_answers_pings_is_dropped_and_one_that_does_is_kept,
    test_an_origin_not_allowed_is_refused_before_the_upgrade,
    test_ping_frames_get_pongs_and_ping_messages_get_pong_events,
    test_refusals_after_a_valid_handshake_are_close_codes,
    test_sse_ops_routes_and_plain_requests_still_reach_aiohttp,
    test_stream_requests_a_stream_cannot_answer_are_refused_quietly,
)


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, gateway_native_websocket=False)
