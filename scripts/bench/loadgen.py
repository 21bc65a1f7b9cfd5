"""What an open-loop HTTP load run is asked to do (`Plan`) and what it measured (`Result`).
The load generator itself is Go (scripts/bench/loadgen_go, run by runner.py), in a
process of its own, never in the server's.

Requests are scheduled at a fixed rate whatever the responses do, and each latency is
measured from the request's *scheduled* send time, so a stalled server shows up as
latency instead of silently lowering the offered load (coordinated omission). The loop
wakes about once a millisecond and sends everything due; that dispatch lag is part of the
latency and is reported on its own so it can be told apart from the server's share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PROGRESS_EVERY = 5.0  # seconds between progress lines on stderr


@dataclass(frozen=True, slots=True)
class Plan:
    base_url: str
    path: str  # e.g. "/v1/feed?limit=20"
    tokens: list[str]  # one per user; each request picks one at random
    rate: float  # requests per second, offered
    warmup: float  # seconds sent but not measured
    duration: float  # seconds measured
    connections: int  # client connection pool size
    second_page_share: float = 0.0  # share of measured requests that ask for page 2
    timeout: float = 10.0
    max_inflight: int = 20_000  # beyond this the client itself is overloaded: shed, counted
    seed: int = 7
    slow_after: float = 0.010  # measured requests slower than this are also listed in `slow`
    method: str = "GET"
    body: str = ""  # JSON, sent with each request when not empty


@dataclass(slots=True)
class Result:
    offered_rate: float
    duration: float
    scheduled: int = 0  # measured requests scheduled
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", ...
    lag: list[float] = field(default_factory=list)  # dispatch lag of measured requests
    last_done: float = 0.0  # seconds after the window opened when the last one finished
    warm_pages: int = 0
    warm_posts: int = 0
    warm_errors: int = 0
    client_cpu: float = 0.0  # user+system seconds of this process over the whole run
    window_start: float = 0.0  # Unix time the measured window opened
    # (scheduled seconds after window_start, latency) of each request over plan.slow_after:
    # when the tail happened, to lay against what the machine did then
    slow: list[tuple[float, float]] = field(default_factory=list)
