"""Runs one load plan in a separate process and accounts the CPU each process group used
over its measured window. The load generator never shares a process with the server.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections import Counter

from scripts.bench import common, cpu
from scripts.bench.loadgen import Plan, Result, run_in_process


def run_load(
    args: argparse.Namespace, plan: Plan, server_pids: tuple[int, ...]
) -> tuple[Result, Counter[str]]:
    """Run one plan in a separate process; CPU per group over its measured window."""
    cpu.wait_quiet(args.quiet_below, args.quiet_wait)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_in_process, args=(plan, sender), name="loadgen")
    proc.start()
    sender.close()
    named = {pid: "server" for pid in server_pids} | {proc.pid or 0: "loadgen"}
    before = cpu.Snapshot({}, 0)
    spent: Counter[str] = Counter()
    try:
        while True:
            kind, value = receiver.recv()
            if (kind, value) == ("window", "start"):
                before = cpu.snapshot(args.db, args.redis_port)
            elif (kind, value) == ("window", "end"):
                spent = cpu.usage(before, cpu.snapshot(args.db, args.redis_port), named)
            elif kind == "result":
                return value, spent
    except EOFError:
        raise common.BenchError(f"load generator died (exit code {proc.exitcode})") from None
    except BaseException:
        proc.terminate()  # our own child: stopping early, its load is no longer wanted
        raise
    finally:
        proc.join(30)
