"""The gateway's per-connection machinery without sockets: the coalescing Flusher and
lazily parsed events. (The same paths run end to end in test_gateway*.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from prometheus_client import Histogram

from core.ids import id_timestamp_ms
from gateway.client import Client, Flusher, QueueLimits
from gateway.codes import Close
from gateway.latency import DeliveryLatency
from gateway.outgoing import Outgoing

POST_ID = 7_300_000_000_000_000_000


class RecordingTransport:
    name = "websocket"

    def __init__(self, broken: bool = False) -> None:
        self.writes: list[list[bytes]] = []
        self.broken = broken

    def write(self, messages: Sequence[Outgoing]) -> None:
        if self.broken:
            raise OSError("socket exploded")
        self.writes.append([m.payload for m in messages])

    def buffered(self) -> int:
        return 0

    async def close(self, code: int, reason: str) -> None:
        return None


def make_client(user: int, transport: RecordingTransport, flusher: Flusher) -> Client:
    histogram = Histogram(f"t_latency_{user}_{id(transport)}", "test", registry=None)
    closed: list[Close] = []
    client = Client(
        user,
        transport,  # type: ignore[arg-type]
        QueueLimits(messages=100, bytes=1 << 20),
        lambda c, code, reason: closed.append(code),
        DeliveryLatency(histogram),
        flusher,
    )
    client.finish_replay(set())
    return client


def post(n: int) -> Outgoing:
    return Outgoing(orjson.dumps({"type": "post", "id": str(POST_ID + n)}), live=True)


async def test_flusher_writes_each_connection_once_per_iteration() -> None:
    flusher = Flusher()
    a, b = RecordingTransport(), RecordingTransport()
    ca, cb = make_client(1, a, flusher), make_client(2, b, flusher)
    for n in range(3):
        ca.deliver(post(n))
    cb.deliver(post(9))
    assert a.writes == [] and b.writes == []  # nothing leaves before the loop turns
    await asyncio.sleep(0)
    assert len(a.writes) == 1 and len(a.writes[0]) == 3  # coalesced into one write
    assert len(b.writes) == 1
    assert ca.delivered == 3 and cb.delivered == 1


async def test_one_broken_connection_does_not_hold_back_the_others() -> None:
    flusher = Flusher()
    broken, fine = RecordingTransport(broken=True), RecordingTransport()
    cbroken, cfine = make_client(1, broken, flusher), make_client(2, fine, flusher)
    cbroken.deliver(post(1))
    cfine.deliver(post(2))
    await asyncio.sleep(0)
    assert fine.writes == [[post(2).payload]]
    # The flusher is not wedged: the next burst is written too.
    cfine.deliver(post(3))
    await asyncio.sleep(0)
    assert fine.writes[-1] == [post(3).payload]


def test_outgoing_parses_only_when_asked_and_gets_it_right() -> None:
    live = post(5)
    assert live.event_id == POST_ID + 5
    assert live.kind == "post"
    assert live.created_ms == id_timestamp_ms(POST_ID + 5)
    assert live.sse.startswith(f"id: {POST_ID + 5}\n".encode())
    replayed = Outgoing(live.payload)
    assert replayed.event_id == POST_ID + 5 and replayed.created_ms is None
    delete = Outgoing(b'{"type":"delete","id":"12"}', live=True)
    assert delete.kind == "delete" and delete.event_id is None and delete.created_ms is None
    for garbage in (b"not json", b"[1,2]", b'{"type":"post","id":"x"}'):
        odd = Outgoing(garbage, live=True)
        assert odd.event_id is None and odd.created_ms is None
        assert odd.ws.endswith(garbage)
