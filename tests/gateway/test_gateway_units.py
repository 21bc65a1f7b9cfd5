"""The gateway's per-connection machinery without sockets: the hub's routing, the
coalescing Flusher, queue limits, WebSocket framing and lazily parsed events. (The same
paths run end to end in test_gateway*.py.)"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

import orjson
from prometheus_client import Histogram
from redis.asyncio.cluster import RedisCluster

from core import keys
from core.ids import id_timestamp_ms
from gateway.broker import FEED_SLICE, PubSubProtocol
from gateway.client import SENT_MEMORY, Client, Flusher, QueueLimits
from gateway.codes import Close
from gateway.hub import Hub
from gateway.latency import DeliveryLatency
from gateway.limiter import RateLimiter
from gateway.outgoing import Outgoing, ws_frame
from gateway.sharded_broker import ShardedBroker

POST_ID = 7_300_000_000_000_000_000
ROOMY = QueueLimits(messages=100, bytes=1 << 20)


class RecordingTransport:
    name = "websocket"

    def __init__(self, broken: bool = False) -> None:
        self.writes: list[list[bytes]] = []
        self.broken = broken
        self.backlog = 0  # what the "kernel" has not taken yet

    def write(self, messages: Sequence[Outgoing]) -> None:
        if self.broken:
            raise OSError("socket exploded")
        self.writes.append([m.payload for m in messages])

    def buffered(self) -> int:
        return self.backlog

    async def close(self, code: int, reason: str) -> None:
        return None


def make_client(
    user: int,
    transport: RecordingTransport,
    flusher: Flusher,
    closed: list[Close] | None = None,
    limits: QueueLimits = ROOMY,
    replaying: bool = False,
) -> Client:
    histogram = Histogram(f"t_latency_{user}_{id(transport)}", "test", registry=None)
    seen = closed if closed is not None else []
    client = Client(
        user,
        transport,
        limits,
        lambda c, code, reason: seen.append(code),
        DeliveryLatency(histogram),
        flusher,
    )
    if not replaying:
        client.finish_replay()
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


async def test_hub_routes_each_channel_to_every_connection_of_its_listeners() -> None:
    hub, flusher = Hub(), Flusher()
    tabs = [RecordingTransport(), RecordingTransport()]
    first, second = (make_client(1, t, flusher) for t in tabs)
    other = RecordingTransport()
    follower = make_client(2, other, flusher)
    author = keys.author_channel(77).encode()
    mine = keys.user_channel(1).encode()
    # The user's first connection brings the channels; a second one shares them.
    assert hub.add(first, [77]) == [mine, author]
    assert hub.add(second, [12345]) == [mine, author]
    hub.add(follower, [77])

    assert hub.dispatch(mine, b'{"type":"x"}') == 2  # both tabs, not user 2
    assert hub.dispatch(author, b'{"type":"y"}') == 3  # every follower's every tab
    assert hub.dispatch(keys.user_channel(3).encode(), b"{}") == 0
    # A gap on some channels (a cluster shard's link, a moved slot) reaches only theirs.
    assert hub.listeners([mine]) == {first, second}
    assert hub.listeners([author]) == {first, second, follower}
    assert hub.listeners([keys.user_channel(2).encode(), b"nobody"]) == {follower}
    await asyncio.sleep(0)
    assert [t.writes for t in tabs] == [[[b'{"type":"x"}', b'{"type":"y"}']]] * 2
    assert other.writes == [[b'{"type":"y"}']]

    # A channel goes stale only when its last connection on the node leaves.
    assert hub.remove(first) == []
    assert hub.dispatch(mine, b"1") == 1
    assert hub.remove(second) == [mine]
    assert hub.dispatch(author, b"2") == 1
    assert hub.connections(1) == 0 and hub.users == 1
    assert hub.remove(second) == []  # twice: nothing left to forget
    assert hub.remove(follower) == [keys.user_channel(2).encode(), author]
    assert hub.dispatch(author, b"3") == 0 and hub.users == 0


async def test_a_client_is_slow_when_its_queue_and_socket_backlog_exceed_the_limit() -> None:
    flusher = Flusher()
    transport, closed = RecordingTransport(), list[Close]()
    limits = QueueLimits(messages=100, bytes=1000)
    client = make_client(1, transport, flusher, closed, limits)
    event = Outgoing(b"x" * 300, live=True)
    client.deliver(event)
    client.deliver(event)
    assert closed == [] and client.high_water == 600
    transport.backlog = 500  # the peer stopped reading: the kernel holds what was sent
    client.deliver(event)  # 900 queued + 500 not yet taken by the kernel
    assert closed == [Close.SLOW_CONSUMER] and client.closing
    client.deliver(event)  # nothing is queued after the close
    await asyncio.sleep(0)
    assert transport.writes == [] and client.high_water == 1400


def test_websocket_frames_carry_the_length_in_the_form_rfc_6455_asks() -> None:
    for size, header in (
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65_535, b"\x81\x7e\xff\xff"),
        (65_536, b"\x81\x7f" + (65_536).to_bytes(8, "big")),
    ):
        payload = b"a" * size
        assert ws_frame(payload) == header + payload, size


def pubsub_message(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(channel),
        channel,
        len(payload),
        payload,
    )


class AbortRecorder:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_pubsub_replies_split_anywhere_across_reads_and_slices_arrive_whole() -> None:
    """A socket read is parsed in FEED_SLICE pieces: messages that straddle a piece, a
    read, or are larger than a piece all arrive once, whole and in order."""
    sent = [
        (b"u:%d" % n, b"\xf0\x9f\x93\xa3" * (n % 7) + b"x" * (n * 37 % 900)) for n in range(400)
    ]
    sent.insert(123, (b"a:9", b"y" * (3 * FEED_SLICE + 5)))  # one message over several pieces
    stream = b"".join(pubsub_message(c, p) for c, p in sent)
    assert len(stream) > 20 * FEED_SLICE
    for read in (len(stream), 65_536, FEED_SLICE + 1, 1_000, 7):
        got: list[tuple[bytes, bytes]] = []

        def on_message(c: bytes, p: bytes, got: list[tuple[bytes, bytes]] = got) -> None:
            got.append((c, p))

        proto = PubSubProtocol(on_message, lambda r: None, lambda p: None)
        for start in range(0, len(stream), read):
            proto.data_received(stream[start : start + read])
        assert got == sent, read


async def test_a_failing_dispatch_skips_one_message_and_garbage_drops_the_link() -> None:
    got: list[bytes] = []

    def on_message(channel: bytes, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("bug in a dispatch target")
        got.append(payload)

    proto = PubSubProtocol(on_message, lambda r: None, lambda p: None)
    link = AbortRecorder()
    proto.transport = link  # type: ignore[assignment]
    big = b"z" * (2 * FEED_SLICE)
    proto.data_received(b"".join(pubsub_message(b"u:1", p) for p in (b"a", b"boom", big, b"b")))
    assert got == [b"a", big, b"b"] and not link.aborted
    proto.data_received(pubsub_message(b"u:1", b"c") + b"?not redis\r\n" + b"x" * FEED_SLICE)
    assert got == [b"a", big, b"b", b"c"] and link.aborted


def note(n: int) -> Outgoing:
    notification = {"id": str(POST_ID + n), "kind": "like"}
    return Outgoing(orjson.dumps({"type": "notification", "data": notification}), live=True)


def sent_ids(transport: RecordingTransport) -> list[int]:
    found = []
    for write in transport.writes:
        for payload in write:
            event = orjson.loads(payload)
            found.append(int(event["id"] if "id" in event else event["data"]["id"]))
    return found


async def test_a_resumed_client_gets_each_event_once_whatever_order_replay_and_live_take() -> None:
    flusher = Flusher()
    transport = RecordingTransport()
    client = make_client(1, transport, flusher, replaying=True)
    client.deliver(post(3))  # live during the replay: held
    client.deliver(post(4))
    client.send_now([Outgoing(post(n).payload) for n in (1, 2, 3)] + [Outgoing(note(9).payload)])
    client.finish_replay()
    await asyncio.sleep(0)
    # Live after the replay, long after it, and out of order: repeats are dropped, what
    # is new is sent even when older than the newest sent (fan-out lag differs by author).
    for event in (post(2), note(9), post(5), post(1), post(0), post(4), post(5)):
        client.deliver(event)
    await asyncio.sleep(0)
    assert sent_ids(transport) == [POST_ID + n for n in (1, 2, 3, 9, 4, 5, 0)]
    # Events without an identity repeat harmlessly and are never dropped.
    delete = b'{"type":"delete","id":"7"}'
    client.deliver(Outgoing(delete, live=True))
    client.deliver(Outgoing(delete, live=True))
    await asyncio.sleep(0)
    assert transport.writes[-1] == [delete, delete]


async def test_a_connection_remembers_the_last_sent_memory_ids_and_keeps_none_while_idle() -> None:
    flusher = Flusher()
    transport = RecordingTransport()
    roomier = QueueLimits(messages=2 * SENT_MEMORY, bytes=1 << 20)
    client = make_client(1, transport, flusher, limits=roomier)
    assert client._sent is None  # an idle connection holds no memory of ids
    for n in range(1, SENT_MEMORY + 1):
        client.deliver(post(n))
    await asyncio.sleep(0)
    client.deliver(post(1))  # the oldest remembered
    await asyncio.sleep(0)
    assert len(sent_ids(transport)) == SENT_MEMORY
    client.deliver(post(SENT_MEMORY + 1))  # pushes post 1 out of the ring
    client.deliver(post(1))
    await asyncio.sleep(0)
    assert sent_ids(transport)[-2:] == [POST_ID + SENT_MEMORY + 1, POST_ID + 1]


def test_resume_replays_no_more_than_a_connection_remembers() -> None:
    from gateway.resume import MAX_NOTIFICATIONS, MAX_REPLAY

    assert MAX_REPLAY + MAX_NOTIFICATIONS <= SENT_MEMORY


def test_connect_limiter_keeps_a_limited_address_limited_under_an_address_flood() -> None:
    limiter = RateLimiter(rate=2, capacity=1_000)
    assert limiter.allow("10.0.0.1") and limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")
    for n in range(999):  # fills the table to its bound, without the limited one leaving
        assert limiter.allow(f"192.0.2.{n}")
    assert len(limiter) == 1_000
    assert not limiter.allow("10.0.0.1"), "the flood reset the limit"
    # Past the bound the address seen longest ago goes, one at a time.
    for n in range(5):
        limiter.allow(f"198.51.100.{n}")
    assert len(limiter) == 1_000


def test_sharded_links_connect_with_the_cluster_clients_credentials_and_tls() -> None:
    """A managed cluster wants TLS and a password on every connection, the sharded
    pub/sub links included (they used to get the credentials only)."""
    url = "rediss://feed:s3cret@127.0.0.1:7000/0?ssl_cert_reqs=none"
    cluster = RedisCluster.from_url(url)
    broker = ShardedBroker(cluster, lambda channel, payload: None, lambda channels: None)
    address = broker.address_of("10.0.0.2", 7001)
    assert (address.host, address.port) == ("10.0.0.2", 7001)
    assert (address.username, address.password) == ("feed", "s3cret")
    assert address.ssl_context is not None
    assert address.ssl_context.verify_mode is ssl.CERT_NONE  # as the URL asked
    plain = ShardedBroker(RedisCluster.from_url("redis://127.0.0.1:7000/0"), print, print)
    assert plain.address_of("10.0.0.2", 7001).ssl_context is None
