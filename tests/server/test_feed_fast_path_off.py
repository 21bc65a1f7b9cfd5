"""FEED_FAST_PATH=false: the API server serves GET /v1/feed through aiohttp like every
other request (server/http/fast_feed.py out of the way). The key feed behaviours of
test_api_feed.py and test_front.py (pages, paging, rebuilds, delta, metrics, pipelining,
auth and parameter errors, Connection: close) run again here, unchanged, in that mode."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.settings import Settings
from server.http.fast_feed import FeedFront

# Collected again in this module, so they see the settings below (pytest resolves a
# test's fixtures from the module it is collected in).
from tests.server.test_api_feed import (  # noqa: F401
    test_delta_returns_only_newer_posts,
    test_feed_shows_followed_authors_and_my_own_posts_newest_first,
    test_metrics_count_requests_by_route_and_timeline_sources,
    test_missing_timeline_is_rebuilt_from_postgres,
    test_paging_500_posts_while_new_ones_arrive_has_no_gap_or_duplicate,
    test_unfollowed_and_deleted_posts_disappear_from_the_feed,
)
from tests.server.test_front import (  # noqa: F401
    connect,
    test_a_head_arriving_byte_by_byte_is_answered,
    test_connection_close_is_honoured,
    test_front_answers_count_in_metrics_and_the_dashboard,
    test_pipelined_requests_are_answered_in_order_across_the_hand_off,
    test_refusals_are_aiohttps_in_the_one_error_shape,
)
from tests.support.api import sign_up

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, feed_fast_path=False)


async def test_with_the_fast_path_off_no_connection_meets_the_front(api: Client) -> None:
    assert api.server.runner is not None
    server: object = api.server.runner.server  # object: FeedFront is no web.Server
    assert not isinstance(server, FeedFront)
    assert isinstance(server, web.Server)
    me = await sign_up(api)
    resp = await api.get("/v1/feed", headers=me.auth)
    assert resp.status == 200 and (await resp.json())["posts"] == []
