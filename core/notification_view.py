"""The public JSON shape of a notification, shared by the API server (GET
/v1/notifications) and fan-out (live `notification` events), so one looks the same on
both paths. It only shapes values; it never reads or writes anything."""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.postview import iso


def notification_view(
    *,
    notification_id: int,
    kind: str,
    actor_id: int,
    actor_handle: str,
    actor_display_name: str | None,
    post_id: int | None,
    created_at: dt.datetime,
) -> dict[str, Any]:
    return {
        "id": str(notification_id),
        "kind": kind,
        "actor": {
            "id": str(actor_id),
            "handle": actor_handle,
            "display_name": actor_display_name,
        },
        "post_id": None if post_id is None else str(post_id),
        "created_at": iso(created_at),
    }
