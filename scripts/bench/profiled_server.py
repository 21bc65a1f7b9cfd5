"""The API server under a profiler, for scripts.bench.feed_read --profile.

BENCH_PROFILE is `pyinstrument` (statistical, low overhead; pip-install it into the venv
by hand, it is not a project dependency) or `cprofile` (exact call counts, slows the
server down a lot). The report is written to BENCH_PROFILE_OUT.{txt,html,prof} when the
server stops on SIGTERM; pyinstrument also writes BENCH_PROFILE_OUT-all.txt (every frame).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import tempfile
from pathlib import Path

from server.app import main as server_main


def _with_cprofile(out: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        server_main()
    finally:
        profiler.disable()
        profiler.dump_stats(out.with_suffix(".prof"))
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        out.with_suffix(".txt").write_text(text.getvalue())


def _with_pyinstrument(out: Path) -> None:
    from pyinstrument import Profiler  # optional: installed by hand for profiling only

    # async_mode disabled: sample whatever the event loop thread is doing, which is where
    # the server's CPU goes, instead of attributing time to awaiting coroutines.
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        server_main()
    finally:
        profiler.stop()
        out.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False))
        full = profiler.output_text(unicode=False, color=False, show_all=True)
        out.with_name(out.name + "-all.txt").write_text(full)
        out.with_suffix(".html").write_text(profiler.output_html())


def main() -> None:
    kind = os.environ.get("BENCH_PROFILE", "pyinstrument")
    default = Path(tempfile.gettempdir()) / "feed-server-profile"
    out = Path(os.environ.get("BENCH_PROFILE_OUT") or default)
    if kind == "cprofile":
        _with_cprofile(out)
    else:
        _with_pyinstrument(out)


if __name__ == "__main__":
    main()
