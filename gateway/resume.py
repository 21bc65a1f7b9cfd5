"""What a reconnecting client missed since a post id: asked from the API server (which
owns the feed logic: timeline, celebrity merge, unfollow filter) with the client's own
token, so the answer is exactly what its feed would show. Too much missed: `reset`. The
API server unreachable or failing (it is restarting, or not started yet): the client is
told to come back shortly (1013), not to reload, since nothing says it missed too much."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson

from core import events
from gateway.outgoing import Outgoing, control

log = logging.getLogger(__name__)
MAX_REPLAY = 200
MAX_NOTIFICATIONS = 50


class ResumeUnavailable(Exception):
    """What the client missed cannot be asked right now; it should retry shortly."""


class Resumer:
    def __init__(self, session: aiohttp.ClientSession, api_url: str) -> None:
        self._session = session
        self._api = api_url.rstrip("/")

    async def missed(self, token: str, since: int) -> list[Outgoing]:
        """Events to replay, oldest first. Raises ResumeUnavailable."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            feed = await self._get(
                "/v1/feed/delta", headers, {"since": str(since), "limit": str(MAX_REPLAY)}
            )
            notes = await self._get("/v1/notifications", headers, {"limit": str(MAX_NOTIFICATIONS)})
        except (aiohttp.ClientError, TimeoutError, ResumeUnavailable) as exc:
            raise ResumeUnavailable(str(exc) or type(exc).__name__) from None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("resume answer not understood (%s); telling the client to reload", exc)
            return [control("reset")]
        if feed.get("has_more"):
            return [control("reset")]  # further behind than a replay should carry
        posts = sorted(feed["posts"], key=lambda p: int(p["id"]))
        missed = [Outgoing(events.live_post(p)) for p in posts]
        newer = [n for n in notes.get("notifications", []) if int(n["id"]) > since]
        missed += [Outgoing(events.live_notification(n)) for n in reversed(newer)]
        return missed

    async def _get(
        self, path: str, headers: dict[str, str], params: dict[str, str]
    ) -> dict[str, Any]:
        async with self._session.get(self._api + path, headers=headers, params=params) as resp:
            if resp.status >= 500 or resp.status == 429:
                raise ResumeUnavailable(f"{path} answered {resp.status}")
            if resp.status != 200:
                raise ValueError(f"{path} answered {resp.status}")
            body = orjson.loads(await resp.read())
            if not isinstance(body, dict):
                raise TypeError(f"{path} answered a non-object")
            return body
