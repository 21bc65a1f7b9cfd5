"""What a benchmark WebSocket client process is asked to do (`ClientPlan`) and the shared
counters it keeps (`SLOTS`). The clients are Go (scripts/bench/wsclient_go, run through
gateway_goclient.py): each holds many connections to the gateway and answers its pings.

Each message is expected to carry {"data": {"t": <ns sent>, "p": <phase>}}; the client
records receive time - t per phase (same machine clock), so latency includes Redis,
the gateway and both kernels' socket queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RETRIES = 3
HANDSHAKE_TIMEOUT = 30.0
# A message later than this is also reported with its publish time, so the benchmark can
# say when its tail happened (scripts/bench/tail.py). Half the target p99; the Go client
# has the same (slowUs).
SLOW_US = 50_000
# Shared counters, one row per client process (read by the parent for progress and by
# the publisher to bound messages in flight).
SLOTS = ("connected", "failed", "received", "lost", "pings", "first_ms", "last_ms")
CONNECTED, FAILED, RECEIVED, LOST, PINGS, FIRST_MS, LAST_MS = range(len(SLOTS))


@dataclass(frozen=True, slots=True)
class ClientPlan:
    index: int
    host: str
    port: int
    source: str  # loopback address to bind (its own ephemeral port range)
    # One connection per entry; a user may appear several times. Pass a range where
    # possible: the plan is pickled into a pipe the new process reads only once it has
    # started, and a large list makes starting each client process block for seconds.
    user_ids: Sequence[int]
    secret: str
    connect_rate: float  # new connections per second, this process
    concurrency: int  # handshakes in flight at once
