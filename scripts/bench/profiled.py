"""A service under a profiler: the API server for `feed_read --profile`, the fan-out
worker (BENCH_PROFILE_SERVICE=fanout) for `fanout_throughput --profile-out PATH`.

BENCH_PROFILE is `cprofile` (exact call counts; it slows Python down 1.5-2x or more, so a
profiled run's rates are not the benchmark's numbers, its split between functions is what
it is for; the fan-out worker's default) or `pyinstrument` (statistical, low overhead;
pip-install it into the venv by hand, it is not a project dependency; the server's
default). The report is written when the service stops on SIGTERM, to BENCH_PROFILE_OUT
.txt and .prof (cProfile: top functions by own time and by cumulative time) or .txt,
.html and -all.txt (pyinstrument, every frame in the last).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path


def _with_cprofile(service_main: Callable[[], None], out: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        service_main()
    finally:
        profiler.disable()
        profiler.dump_stats(out.with_suffix(".prof"))
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        out.with_suffix(".txt").write_text(text.getvalue())


def _with_pyinstrument(service_main: Callable[[], None], out: Path) -> None:
    from pyinstrument import Profiler  # optional: installed by hand for profiling only

    # async_mode disabled: sample whatever the event loop thread is doing, which is where
    # the server's CPU goes, instead of attributing time to awaiting coroutines.
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        service_main()
    finally:
        profiler.stop()
        out.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False))
        full = profiler.output_text(unicode=False, color=False, show_all=True)
        out.with_name(out.name + "-all.txt").write_text(full)
        out.with_suffix(".html").write_text(profiler.output_html())


def main() -> None:
    service = os.environ.get("BENCH_PROFILE_SERVICE", "server")
    if service == "fanout":
        from fanout.app import main as service_main
    else:
        from server.app import main as service_main
    kind = os.environ.get("BENCH_PROFILE", "cprofile" if service == "fanout" else "pyinstrument")
    default = Path(tempfile.gettempdir()) / f"{service}-profile"
    out = Path(os.environ.get("BENCH_PROFILE_OUT") or default)
    if kind == "cprofile":
        _with_cprofile(service_main, out)
    else:
        _with_pyinstrument(service_main, out)


if __name__ == "__main__":
    main()
