"""The open-loop HTTP load generator: what a run is asked to do (`Plan`), what it measured
(`Result`), and running it. The generator is Go (scripts/bench/loadgen_go: one thread
running its own epoll loop, several times cheaper per request than the aiohttp one it
replaced), built from source on first use into a git-ignored directory and rebuilt when
its source changes; it runs in a process of its own, never in the server's, and the CPU
each process group used over its measured window is accounted here (scripts/bench/cpu.py).

Requests are scheduled at a fixed rate whatever the responses do, and each latency is
measured from the request's *scheduled* send time, so a stalled server shows up as
latency instead of silently lowering the offered load (coordinated omission). The loop
wakes about once a millisecond and sends everything due; that dispatch lag is part of the
latency and is reported on its own so it can be told apart from the server's share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from scripts.bench import common, cpu

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


# One load generator; `--client go` is still accepted, so recorded commands still run.
CLIENTS = ("go",)
CLIENT_NAMES = {"go": "Go (one thread, own epoll loop, scripts/bench/loadgen_go)"}
GO_SOURCE = Path(__file__).resolve().parent / "loadgen_go"
GO_BINARY = Path(__file__).resolve().parents[2] / ".stack" / "bench-bin" / "loadgen"
GO_BUILD_TIMEOUT = 300.0
# The Go client sends what is due at most once per tick (unless a response wakes it
# first): at 2 000 req/s this halves its timer
# wake-ups (0.06 instead of 0.09 ms of CPU per request) for at most 1 ms of dispatch lag,
# which is part of the latency and reported. 0 sends each request at its own time.
GO_TICK = 0.001
WINDOW_START = "@window start"
WINDOW_END = "@window end"


def default_client() -> str:
    """The only client left: Go (the Python ones were its duplicates)."""
    return "go"


def go_binary() -> Path:
    """The Go load generator, built now if it is missing or older than its source."""
    return build_go(GO_SOURCE, GO_BINARY.name)


def build_go(source: Path, name: str) -> Path:
    """The Go program in `source` (a scripts/bench directory with its own go.mod, no
    external modules) built into .stack/bench-bin/`name`, now if it is missing or older
    than any of its .go files or go.mod."""
    binary = GO_BINARY.with_name(name)
    sources = [*source.glob("*.go"), source / "go.mod"]
    newest = max(p.stat().st_mtime for p in sources)
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    go = shutil.which("go")
    if go is None:
        raise common.BenchError(f"{name} needs `go` on PATH to build it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", CGO_ENABLED="0")
    try:
        subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=GO_BUILD_TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        partial.unlink(missing_ok=True)
        raise common.BenchError(f"building {name} failed:\n{exc.stderr[-2000:]}") from None
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise common.BenchError(f"building {name} timed out") from None
    partial.replace(binary)  # atomic: a concurrent run sees the old or the new binary
    return binary


def run_load(
    args: argparse.Namespace, plan: Plan, server_pids: tuple[int, ...]
) -> tuple[Result, dict[str, float]]:
    """Run one plan in a separate process (the Go load generator); CPU per group over its
    measured window."""
    return _run_go(args, plan, server_pids)


def go_plan(plan: Plan) -> dict[str, Any]:
    """The Go client's JSON plan: the same load, one entry per reader."""
    return {
        "base_url": plan.base_url,
        "rate": plan.rate,
        "warmup": plan.warmup,
        "duration": plan.duration,
        "connections": plan.connections,
        "timeout": plan.timeout,
        "max_inflight": plan.max_inflight,
        "seed": plan.seed,
        "slow_after": plan.slow_after,
        "second_page_share": plan.second_page_share,
        "progress_every": PROGRESS_EVERY,
        "tick": GO_TICK,
        "requests": [
            {
                "path": plan.path,
                "authorization": f"Bearer {t}",
                "kind": "page1",
                "method": plan.method,
                "body": plan.body,
            }
            for t in plan.tokens
        ],
    }


def _run_go(
    args: argparse.Namespace, plan: Plan, server_pids: tuple[int, ...]
) -> tuple[Result, dict[str, float]]:
    exe = go_binary()  # before waiting for quiet: a build is busy work
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        plan_path, out_path = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        plan_path.write_bytes(orjson.dumps(go_plan(plan)))
        cpu.wait_quiet(args.quiet_below, args.quiet_wait)
        # stdout (the result, megabytes) goes to a file so that reading stderr (progress
        # and window markers) line by line can never dead-lock on a full pipe.
        with out_path.open("wb") as out:
            proc = subprocess.Popen([exe, str(plan_path)], stdout=out, stderr=subprocess.PIPE)
        named = {pid: "server" for pid in server_pids} | {proc.pid: "loadgen"}
        before = cpu.Snapshot({}, 0)
        spent: dict[str, float] = {}
        try:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == WINDOW_START:
                    before = cpu.snapshot(args.db, (args.redis_port,))
                elif line == WINDOW_END:
                    spent = cpu.usage(before, cpu.snapshot(args.db, (args.redis_port,)), named)
                else:
                    sys.stderr.write(line + "\n")
                    sys.stderr.flush()
            code = proc.wait()
        except BaseException:
            proc.terminate()  # our own child: stopping early, its load is no longer wanted
            proc.wait(30)
            raise
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
        if code != 0:
            raise common.BenchError(f"load generator (go) died (exit code {code})")
        return _result(orjson.loads(out_path.read_bytes())), spent


def _result(data: dict[str, Any]) -> Result:
    return Result(
        offered_rate=float(data["offered_rate"]),
        duration=float(data["duration"]),
        scheduled=int(data["scheduled"]),
        latencies={str(k): [float(x) for x in v] for k, v in data["latencies"].items()},
        outcomes=Counter({str(k): int(n) for k, n in data["outcomes"].items()}),
        lag=[float(x) for x in data["lag"]],
        last_done=float(data["last_done"]),
        warm_pages=int(data["warm_pages"]),
        warm_posts=int(data["warm_posts"]),
        warm_errors=int(data["warm_errors"]),
        client_cpu=float(data["client_cpu"]),
        window_start=float(data["window_start"]),
        slow=[(float(at), float(latency)) for at, latency in data["slow"]],
    )
