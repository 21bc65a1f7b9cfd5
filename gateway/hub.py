"""Who is connected to this node, and which channels it needs: a user's own channel while
they have at least one connection here, an author's channel while at least one local
user follows that (pull-tier) author. Dispatch turns one published message into one
Outgoing (framed once) delivered to every local connection concerned."""

from __future__ import annotations

from collections import defaultdict

from core import keys
from gateway.client import Client
from gateway.outgoing import Outgoing


class Hub:
    def __init__(self) -> None:
        self._clients: defaultdict[int, set[Client]] = defaultdict(set)
        # Channel -> the connections it reaches (not their users): dispatch is the hot
        # path, and one lookup per message beats one per listening user.
        self._listeners: defaultdict[bytes, set[Client]] = defaultdict(set)
        self._channels_of: dict[int, list[bytes]] = {}

    def connections(self, user_id: int) -> int:
        return len(self._clients.get(user_id, ()))

    def live_connections(self, user_id: int) -> int:
        """Connections of the user past their catch-up: an event published now reaches
        every one of them."""
        return sum(1 for client in self._clients.get(user_id, ()) if not client.replaying)

    def user_ids(self) -> list[int]:
        return list(self._clients)

    @property
    def users(self) -> int:
        return len(self._clients)

    def all_clients(self) -> list[Client]:
        return [c for clients in self._clients.values() for c in clients]

    def add(self, client: Client, authors: list[int]) -> list[bytes]:
        """Register a connection; returns the channels its user needs (`authors` counts
        for the user's first connection only). Another connection of the same user, or
        of a user following the same author, may still be waiting for one of them to be
        subscribed: the broker is asked for all of them, and knows which are new."""
        user = client.user_id
        first = user not in self._clients
        self._clients[user].add(client)
        if first:
            channels = [keys.user_channel(user).encode()]
            channels += [keys.author_channel(a).encode() for a in authors]
            self._channels_of[user] = channels
        else:
            channels = self._channels_of[user]
        for channel in channels:
            self._listeners[channel].add(client)
        return channels

    def remove(self, client: Client) -> list[bytes]:
        """Forget a connection; returns channels nobody on this node needs any more."""
        user = client.user_id
        clients = self._clients.get(user)
        if clients is None or client not in clients:
            return []
        clients.discard(client)
        if clients:
            channels = self._channels_of[user]
        else:  # the user's last connection here
            del self._clients[user]
            channels = self._channels_of.pop(user, [])
        stale = []
        for channel in channels:
            listeners = self._listeners[channel]
            listeners.discard(client)
            if not listeners:
                del self._listeners[channel]
                stale.append(channel)
        return stale

    def listeners(self, channels: list[bytes]) -> set[Client]:
        """The connections any of `channels` reaches."""
        found: set[Client] = set()
        for channel in channels:
            found.update(self._listeners.get(channel, ()))
        return found

    def dispatch(self, channel: bytes, payload: bytes) -> int:
        clients = self._listeners.get(channel)
        if not clients:
            return 0
        message = Outgoing(payload, True)
        for client in clients:
            client.deliver(message)
        return len(clients)
