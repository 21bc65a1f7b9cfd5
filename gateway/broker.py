"""The node's one Redis pub/sub connection: opened and subscribed at start-up (redis-py
opens it lazily otherwise, and concurrent first subscribes can each open their own and
orphan subscriptions). Subscribe/unsubscribe requests are batched into one command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)


class RedisBroker:
    def __init__(
        self,
        client: aioredis.Redis,
        control_channel: str,
        on_message: Callable[[bytes, bytes], None],
    ) -> None:
        self._client = client
        self._control = control_channel
        self._on_message = on_message
        self._pubsub: PubSub | None = None
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._kick = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._control)

    async def close(self) -> None:
        self._closed = True
        self._kick.set()
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channels: list[bytes]) -> None:
        """Returns once the channels are subscribed (messages published after that are
        ours): resume relies on it to leave no gap."""
        if not channels:
            return
        self._to_subscribe.update(channels)
        self._to_unsubscribe.difference_update(channels)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick.set()
        await waiter

    def unsubscribe(self, channels: list[bytes]) -> None:
        if channels:
            self._to_unsubscribe.update(channels)
            self._to_subscribe.difference_update(channels)
            self._kick.set()

    async def run_subscriptions(self) -> None:
        """Applies queued (un)subscriptions in batches: many users connecting at once cost
        a few SUBSCRIBE commands, not one each."""
        assert self._pubsub is not None
        while not self._closed:
            await self._kick.wait()
            self._kick.clear()
            await asyncio.sleep(0.002)  # let a burst of connects accumulate
            subscribe, self._to_subscribe = list(self._to_subscribe), set()
            unsubscribe, self._to_unsubscribe = list(self._to_unsubscribe), set()
            waiters, self._waiters = self._waiters, []
            try:
                if subscribe:
                    await self._pubsub.subscribe(*subscribe)
                if unsubscribe:
                    await self._pubsub.unsubscribe(*unsubscribe)
            except (ConnectionError, OSError, aioredis.ConnectionError) as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(ConnectionError(f"subscribe failed: {exc}"))
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run_reader(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (aioredis.ConnectionError, OSError) as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
                continue
            if message is not None and message["type"] in ("message", b"message"):
                self._on_message(message["channel"], message["data"])
