"""Local stand-ins for Apple's, Google's and the browsers' push services, speaking the
real protocols, for tests and the demo (`python -m standins --dir <dir>`).

- apns.py: HTTP/2 over TLS with a provider JWT (ES256), Apple's headers and reasons.
- fcm.py: HTTPS, Google's OAuth 2.0 jwt-bearer grant (RS256 service-account assertion)
  and FCM HTTP v1 `messages:send` with its error JSON.
- webpush.py: HTTPS, VAPID (RFC 8292), decrypts aes128gcm (RFC 8188) bodies.
- tls.py: the throwaway CA they are served with (PUSH_CA_FILE).

Never imported by the services themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """What a stand-in received, in order, with a bounded wait for the next ones."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._waiters: set[asyncio.Event] = set()

    def add(self, item: T) -> None:
        self.items.append(item)
        for waiter in self._waiters:
            waiter.set()

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.items))

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[T]:  # noqa: ASYNC109
        """The first `count` items, once there are that many; TimeoutError otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.items) < count:
                    waiter = asyncio.Event()
                    self._waiters.add(waiter)
                    try:
                        await waiter.wait()
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            raise TimeoutError(
                f"received {len(self.items)} of {count} within {timeout} s"
            ) from None
        return self.items[:count]
