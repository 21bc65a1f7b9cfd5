"""The one notification shape (core/notification_view.py), as the API lists it and
fan-out sends it live: ids as decimal strings, times in ISO-8601 UTC."""

import datetime as dt

from core.notification_view import notification_view


def test_ids_are_strings_and_a_missing_post_is_null() -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    view = notification_view(
        notification_id=2**63 - 1,
        kind="follow",
        actor_id=42,
        actor_handle="ann",
        actor_display_name=None,
        post_id=None,
        created_at=created,
    )
    assert view == {
        "id": "9223372036854775807",
        "kind": "follow",
        "actor": {"id": "42", "handle": "ann", "display_name": None},
        "post_id": None,
        "created_at": "2026-01-02T01:04:05.678Z",
    }
    liked = notification_view(
        notification_id=1,
        kind="like",
        actor_id=2,
        actor_handle="bob",
        actor_display_name="Bob",
        post_id=7,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    assert liked["post_id"] == "7"
    assert liked["created_at"] == "2026-01-01T00:00:00.000Z"
