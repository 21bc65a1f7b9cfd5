"""The fan-out worker under cProfile, for `fanout_throughput --profile-out PATH`.

cProfile slows Python down (roughly 1.5-2x here), so a profiled run's rates are not the
benchmark's numbers; its split between functions is what it is for. The report is
written when the worker stops on SIGTERM: PATH.prof (pstats) and PATH.txt (top functions
by own time and by cumulative time).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from pathlib import Path

from fanout.app import main as fanout_main


def main() -> None:
    out = Path(os.environ.get("BENCH_PROFILE_OUT", "/tmp/fanout-profile"))  # noqa: S108
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fanout_main()
    finally:
        profiler.disable()
        profiler.dump_stats(out.with_suffix(".prof"))
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(50)
        out.with_suffix(".txt").write_text(text.getvalue())


if __name__ == "__main__":
    main()
